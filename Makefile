# medops — two commands on a fresh machine:  make run   |   make test
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= quick
PYTHON ?= python3

.PHONY: venv run repro test test-fast lock bench clean

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . || $(BIN)/pip install --quiet --no-deps -e .
	touch $@

venv: $(BIN)/.installed  ## create .venv from the pinned lock

run: venv  ## generate -> validate -> preprocess -> train -> evaluate with `dvc repro` on PROFILE
	$(BIN)/medops profile $(PROFILE)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/medops show fusion_seg

test: venv  ## the whole test suite (unit, bad input, resume, dvc integration)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q

test-fast: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m "not slow"

bench: venv  ## benchmarks/ (numbers in README)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/run_all.py

lock:  ## re-resolve requirements.in into the pinned lock (needs uv)
	uv pip compile requirements.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock

clean:
	rm -rf data models reports mlflow.db mlartifacts
