# Two entry points, make replicate and make test; every target installs what it needs into .venv first:
#   make help        this list: each target with its one-line description
#   make test        the test suite (lint included), then the smoke DAG end to end (what CI runs)
#   make test-fast   the test suite without the tests marked slow
#   make lint        ruff check, ruff format --check and snakemake --lint alone (tests/test_lint.py)
#   make smoke       the whole DAG at smoke scale in a scratch folder under .smoke/ (KEEP=1 keeps it)
#   make replicate   the replication at the scale this machine can carry (SCALE=cpu by default; PART=<experiment> for one)
#   make report      one self-contained HTML page of a scale's results (results/<scale>/report.html)
#   make bench       the CPU benchmarks (python -m benchmarks; results/benchmarks/)
#   make study       the scale's studies: model size, GAPT's knobs, settings (SCALE=cpu; results/<scale>/study/)
#   make crosscheck  do CLAIMS.md and the README's claims table say what the committed summaries say, from runs of one clean commit?
#   make mutation    mutation testing of the core with mutmut (not part of CI; docs/testing.md)
#   make gpu-check   the GPU path's acceptance run on one CUDA device in at most 10 minutes, no network (docs/running.md, "Before a GPU scale")
#   make test-slurm  the smoke DAG through a real one-node SLURM started for it (root; docs/testing.md, "The SLURM path")
# TORCH=cpu installs PyTorch's CPU-only build from PyTorch's own wheel index (TORCH_CPU_INDEX) instead
# of the default build of the package index (on Linux x86_64, a CUDA build with its CUDA wheels).
PYTHON ?= python3
VENV ?= .venv
SCALE ?= cpu
TORCH ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
KEEP ?= 0
# PART=<experiment>: one experiment of the scale alone (a part of about 150 minutes or less on 2 cores at
# cpu); its claims join those of the experiments whose results the scale already holds
PART ?=
PART_CONFIG := $(if $(PART),--config 'experiments=[$(PART)]')
SMOKE_CONFIG ?= config/smoke.yaml
BIN := $(VENV)/bin
SMOKE ?= .smoke
SCALES := $(sort $(patsubst config/%.yaml,%,$(wildcard config/*.yaml)))
TORCH_VERSION := $(shell sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)

.PHONY: help install test test-fast lint smoke replicate study report crosscheck bench check-scale mutation gpu-check test-slurm

# a wrong SCALE stops make before anything runs, with one line naming the valid scales
ifneq ($(filter replicate study report crosscheck check-scale,$(MAKECMDGOALS)),)
ifneq ($(words $(filter $(SCALE),$(SCALES))),1)
$(error SCALE=$(SCALE) is not a scale; choose one of: $(SCALES))
endif
endif

help:
	@awk '!/^#/ {exit} sub(/^#   make /, "") {name = $$1; sub(/^[^ ]+ +/, ""); printf "make %-12s %s\n", name, $$0}' $(firstword $(MAKEFILE_LIST))

$(BIN)/.installed: pyproject.toml
	@case "$(TORCH)" in ""|cpu) ;; *) echo "error: TORCH=$(TORCH): leave it unset (the index's default build) or set TORCH=cpu" >&2; exit 2;; esac
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(filter cpu,$(TORCH)),$(BIN)/python -m pip install --quiet --index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)")
	$(BIN)/python -m pip install --quiet -e '.[suite,test,hf,slurm]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest
	$(MAKE) smoke

lint: install
	$(BIN)/python -m pytest -q tests/test_lint.py

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# The whole DAG at smoke scale in a scratch folder of its own (so that two of them in one clone never
# touch each other's files), then a check that every table, figure and CLAIMS.md exists. Every
# experiment runs even when another fails; a failure keeps the folder and exits non-zero. KEEP=1
# keeps it after a success too.
smoke: install
	@mkdir -p $(SMOKE)
	@dir=$$(mktemp -d $(SMOKE)/run-XXXXXX) && \
	paths="runs_dir=$$dir/runs results_dir=$$dir/results logs_dir=$$dir/logs data_dir=$$dir/data" && \
	echo "smoke DAG in $$dir" && \
	if $(BIN)/snakemake --cores 2 --keep-going --configfile $(SMOKE_CONFIG) --config $$paths --quiet rules \
		&& $(BIN)/python -m replication.dag.plan $(SMOKE_CONFIG) $$paths; then \
		if [ "$(KEEP)" = 1 ]; then echo "smoke DAG passed; its outputs are in $$dir"; \
		else rm -rf "$$dir"; echo "smoke DAG passed"; fi; \
	else echo "smoke DAG failed: the runs, results and logs are kept in $$dir" >&2; exit 1; fi

check-scale:
	@:

replicate: check-scale install
	$(BIN)/snakemake --profile profiles/local-cpu --configfile config/$(SCALE).yaml $(PART_CONFIG)

# the studies the experiments declare under scales.<scale>.study (sizes, knobs, settings); it reuses
# (sizes and knobs) the scale's own runs of the methods they compare, training them first when missing
study: check-scale install
	$(BIN)/snakemake study --profile profiles/local-cpu --configfile config/$(SCALE).yaml $(PART_CONFIG)

# one self-contained page: CLAIMS.md, every experiment's table and every figure with its caption
report: check-scale install
	$(BIN)/python -m replication.reporting.report --scale $(SCALE)

# the committed CLAIMS.md made again from the committed summaries, and the README's quotes against it
crosscheck: check-scale install
	$(BIN)/python -m replication.reporting.crosscheck config/$(SCALE).yaml

# benchmarks (python -m benchmarks --help): ratios measured side by side, written to results/benchmarks
bench: install
	$(BIN)/python -m benchmarks

# the smoke DAG through profiles/slurm on a one-node SLURM that tests/cluster/slurm.sh installs (apt),
# starts and stops; checked against a local run of the same DAG, then a failing job and its rerun
test-slurm: install
	$(BIN)/python -m pip install --quiet -e '.[suite,test,hf,slurm]'
	bash tests/cluster/slurm.sh bash tests/cluster/smoke_on_slurm.sh

# the GPU path's acceptance run in at most 10 minutes with no network, its stages most important first, each
# skipped when the budget left cannot carry it: pre-flight (driver, torch wheel, C compiler, Python.h); every
# method at the paper's shape, bf16 and compiled, timed against ce with MFU; SIGTERM twice, then resume; the
# arithmetic paper path with recompiles fatal; two ranks on the one GPU against one process; pytest -m gpu;
# a mini-DAG of arithmetic and forgetting through profiles/local-gpu. Writes results/benchmarks/gpu.json
# (python -m benchmarks.gpu_check --help for the options, passed in GPU_CHECK_ARGS; --tiny runs every
# stage on CPU at a tiny shape)
GPU_CHECK_ARGS ?=
gpu-check: install
	$(BIN)/python -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# mutation testing with mutmut, configured in [tool.mutmut] of pyproject.toml (docs/testing.md,
# "Mutation testing"); not part of CI. MUTATION_SCOPE names the functions whose mutants run, as fnmatch
# patterns over mutmut's mutant names (`?` stands for the `ǁ` between a class and its method): every
# function of mbe, gapt, methods, objectives, monitor and stats, and of the training loop the step, its
# helpers and its cross-process reduction. `make mutation MUTATION_SCOPE=` runs every function of the
# seven files instead (all of train.py) and, unlike a named scope, reuses the
# results of unchanged functions on a rerun. mutants/ keeps the mutants and results: `.venv/bin/mutmut
# show NAME` prints one mutant's diff, `.venv/bin/mutmut browse` walks them; delete mutants/ for a run
# from scratch. One worker by default, so that the machine stays usable; MUTATION_WORKERS=2 on an idle one.
MUTATION_WORKERS ?= 1
MUTATION_SCOPE ?= replication.science.mbe.* replication.science.gapt.* replication.science.methods.* \
	replication.training.objectives.* replication.training.monitor.* replication.reporting.stats.* \
	replication.training.train.x?Trainer?_train_step__* replication.training.train.x?Trainer?_alignment__* \
	replication.training.train.x?Trainer?_write_probe__* replication.training.train.x?Trainer?_update__* \
	replication.training.train.x?Trainer?_counters__* replication.training.train.x?Trainer?_reduce__*
MUTATION_ARGS = $(foreach p,$(MUTATION_SCOPE),'$(p)')

$(BIN)/.installed-mutation: $(BIN)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[suite,test,mutation]'
	touch $@

mutation: install $(BIN)/.installed-mutation
	$(BIN)/mutmut run --max-children $(MUTATION_WORKERS) $(MUTATION_ARGS)
	@echo "mutants not killed (status, name), then the counts; survival = survived / tested"
	@$(BIN)/mutmut results --all=true | $(BIN)/python tests/mutation_summary.py $(MUTATION_ARGS)
