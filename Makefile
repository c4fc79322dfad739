# medops — two commands on a fresh machine:  make run   |   make test
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= quick
PYTHON ?= python3
# what `make run` reproduces: every family's data, main model, ablation, report and promotion
# (params.yaml orchestration.run_targets); FAMILY=a,b runs only those families
FAMILY ?=

.PHONY: venv run repro test test-fast lock bench gpu-wheels clean system-deps services-start services-stop

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . || $(BIN)/pip install --quiet --no-deps -e .
	touch $@

venv: $(BIN)/.installed  ## create .venv from the pinned lock

run: venv  ## every family (or FAMILY=a,b): data -> train -> evaluate -> ablation -> report -> promote, on PROFILE
	$(BIN)/medops profile $(PROFILE)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/medops run $(if $(strip $(FAMILY)),--family "$(FAMILY)")

system-deps:  ## Debian packages: headless Chromium (page screenshots), PostgreSQL server, a headless JRE (METEOR)
	@command -v chromium >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v java >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium postgresql default-jre-headless >/dev/null; \
	  else echo "install chromium, postgresql and a JRE (apt-get install chromium postgresql default-jre-headless)"; exit 1; fi; }

services-start: venv  ## PostgreSQL + SeaweedFS (S3) + MLflow server on loopback (.services/)
	infra/local/services.sh start

services-stop:
	infra/local/services.sh stop

test: venv system-deps  ## services up, the whole test suite, services down (timings printed)
	@t0=$$(date +%s.%N); infra/local/services.sh start || exit 1; t1=$$(date +%s.%N); \
	echo "services started in $$($(BIN)/python -c "print(round($$t1 - $$t0, 1))") s"; \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q; rc=$$?; \
	t2=$$(date +%s.%N); infra/local/services.sh stop >/dev/null; t3=$$(date +%s.%N); \
	echo "start $$($(BIN)/python -c "print(round($$t1 - $$t0, 1))") s, stop $$($(BIN)/python -c "print(round($$t3 - $$t2, 1))") s" > .services/timing.txt; \
	exit $$rc

test-fast: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -m "not slow"

bench: venv  ## benchmarks/ (numbers in README)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/run_all.py

gpu-wheels:  ## what benchmarks/gpu.py needs on the GPU machine beyond its torch (MONAI, safetensors) into .whl/
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --platform manylinux2014_x86_64 -d .whl monai==1.6.1 safetensors==0.8.0

lock:  ## re-resolve requirements.in into the pinned lock (needs uv)
	uv pip compile requirements.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock

clean:
	rm -rf data models reports mlflow.db mlartifacts
