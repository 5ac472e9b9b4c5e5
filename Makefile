# Two entry points, each installing what it needs into .venv first:
#   make test        the test suite (what CI runs)
#   make replicate   the replication at the scale this machine can carry (SCALE=cpu by default)
PYTHON ?= python3
VENV ?= .venv
SCALE ?= cpu
CORES ?= all
BIN := $(VENV)/bin

.PHONY: install test test-fast replicate

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

replicate: install
	$(BIN)/python -m replication.cli replicate --scale $(SCALE)
