# Two entry points, each installing what it needs into .venv first:
#   make test        the test suite, then the smoke DAG end to end (what CI runs)
#   make replicate   the replication at the scale this machine can carry (SCALE=cpu by default)
PYTHON ?= python3
VENV ?= .venv
SCALE ?= cpu
BIN := $(VENV)/bin
SMOKE := .smoke
SMOKE_PATHS := runs_dir=$(SMOKE)/runs results_dir=$(SMOKE)/results logs_dir=$(SMOKE)/logs data_dir=$(SMOKE)/data

.PHONY: install test test-fast smoke replicate report bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest
	$(MAKE) smoke

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# the whole DAG at smoke scale in a scratch folder, then a check that every table, figure and
# CLAIMS.md exists
smoke: install
	rm -rf $(SMOKE)
	$(BIN)/snakemake --cores 2 --configfile config/smoke.yaml --config $(SMOKE_PATHS) --quiet rules
	$(BIN)/python -m replication.workflow config/smoke.yaml $(SMOKE_PATHS)

replicate: install
	$(BIN)/snakemake --profile profiles/local-cpu --configfile config/$(SCALE).yaml

report: install
	$(BIN)/snakemake --configfile config/$(SCALE).yaml --report results/$(SCALE)/report.html

# benchmarks (python -m benchmarks --help): ratios measured side by side, written to results/benchmarks
bench: install
	$(BIN)/python -m benchmarks
