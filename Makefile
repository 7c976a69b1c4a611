# STFN pipeline. `make run` and `make test` create the virtualenv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned (a bare `torch` can pull a multi-GB CUDA build).
# Override for a GPU host, e.g.: make run TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP := $(BIN)/python -m pip
PIP_FLAGS ?= --quiet --disable-pip-version-check
# The bulk install uses uv (~40 s instead of ~3 min with pip here); INSTALLER=pip uses pip.
INSTALLER ?= uv
# when make started (before any install): `make run`'s summary prints the install time from it
MAKE_START := $(shell date +%s.%N)
UV_VERSION ?= 0.13.9
UI_PORT ?= 5000

export PATH := $(abspath $(BIN)):$(PATH)
export MLFLOW_DISABLE_TELEMETRY ?= true
export DVC_NO_ANALYTICS ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.DEFAULT_GOAL := help
.PHONY: help install install-dev run test test-all test-integration test-fast lint ui dvc-repro clean servers servers-stop deploy bench serve docs docs-serve docs-screenshots gpu-wheels ablation soak

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

ifeq ($(INSTALLER),uv)
INSTALL = $(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -c constraints.txt
else
INSTALL = $(PIP) install $(PIP_FLAGS) -c constraints.txt
endif

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	@echo "==> installing $(TORCH_SPEC) first (pinned), then the project from constraints.txt ($(INSTALLER))"
	$(PIP) install $(PIP_FLAGS) "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(if $(filter uv,$(INSTALLER)),$(PIP) install $(PIP_FLAGS) "uv==$(UV_VERSION)")
	$(INSTALL) -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(INSTALL) -e ".[dev]"
	@touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(INSTALL) -e ".[docs]"
	@touch $@

install: $(VENV)/.installed ## Create .venv and install the project

install-dev: $(VENV)/.installed-dev ## Create .venv and install the project with dev extras

run: $(VENV)/.installed ## Run the whole pipeline on the default dataset (Prefect flow -> MLflow registry)
	STFN_MAKE_START=$(MAKE_START) $(BIN)/stfn run

serve: $(VENV)/.installed ## Serve the champion over HTTP on 127.0.0.1:5001 (follows @champion; SERVE_ARGS="--port 8080")
	$(BIN)/stfn serve $(SERVE_ARGS)

# the suite on TEST_WORKERS processes (pytest-xdist; a file's tests stay on one worker): much of it
# waits on servers and subprocesses, so 2 workers (one torch thread each: tests/conftest.py) finish ~20 % sooner on 2 cores. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(VENV)/.installed-dev ## Run the test suite (unit, data, integration: real Prefect, MLflow, DVC, GX)
	$(BIN)/python -m pytest $(XDIST)

test-all: $(VENV)/.installed-dev ## Every test, the `thorough` ones too (what `make test` leaves out to stay within 10 minutes on a fresh clone)
	$(BIN)/python -m pytest $(XDIST) -m ""

test-integration: $(VENV)/.installed-dev ## Only the team-mode tests: real MLflow + Prefect servers on PostgreSQL, deployments, a worker
	$(BIN)/python -m pytest -m integration

test-fast: $(VENV)/.installed-dev ## Only the fast tests (no real flow, no dvc repro)
	$(BIN)/python -m pytest -m "not slow"

bench: $(VENV)/.installed ## Benchmarks side by side (throughput vs peers, pipeline overhead, scaling) -> reports/bench.json + docs/data/bench.json
	@# vit-pytorch without its dependencies: it would pull a torchvision that does not load beside this torch
	$(INSTALL) --no-deps "vit-pytorch==1.26.11"
	$(INSTALL) -e ".[bench]"
	$(BIN)/python benchmarks/run.py

SOAK_ARGS ?=
soak: $(VENV)/.installed-dev ## A simulated year of team mode with seeded faults, invariants checked (~1 h; PostgreSQL, root for a tmpfs) -> docs/data/soak.json (+ .png); SOAK_ARGS="--seed 3"
	$(BIN)/python -m soak --weeks 52 --snapshot docs/data/soak.json $(SOAK_ARGS)

ablation: $(VENV)/.installed ## STFN against its ablations, 3 seeds, each spatial encoder (~40 min on 2 cores) -> reports/ablation.json; its snapshot docs/data/ablation.json (+ .png)
	$(BIN)/stfn ablate --seeds 3
	$(BIN)/stfn ablate --seeds 3 --set model.spatial_encoder=patches
	cp reports/ablation.json docs/data/ablation.json
	cp reports/plots/ablation.png docs/data/ablation.png

# pydantic and its dependencies for CPython 3.12 (the GPU machine's Python; it has the rest), as constraints.txt pins them
GPU_WHEELS = pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
gpu-wheels: $(BIN)/python ## The wheels benchmarks/gpu_check.sh carries to a GPU machine that reaches no package index -> .whl/
	mkdir -p .whl
	$(PIP) download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)

# the tables of measured figures are generated from the snapshots in docs/data/ (docs/generate.py, into the
# git-ignored docs/generated/), and so is the CLI reference, from the Typer app itself.
# NO_MKDOCS_2_WARNING: mkdocs-material's banner about its end of life (a notice, not a build warning)
docs: $(VENV)/.installed-docs ## Build the docs site into site/ (strict: a broken link, anchor or API reference fails)
	$(BIN)/python docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(VENV)/.installed-docs ## The docs site on 127.0.0.1:8000, rebuilt on every edit of a page
	$(BIN)/python docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

docs-screenshots: $(VENV)/.installed-dev ## The team-mode test (with its browser check) on a run that learns; its screenshots of the MLflow UI into docs/screenshots/
	STFN_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/integration/test_servers.py

lint: $(VENV)/.installed-dev ## ruff
	$(BIN)/ruff check src flows soak tests benchmarks

dvc-repro: $(VENV)/.installed ## Run the pipeline through DVC (dvc repro) and push data to the local remote
	$(BIN)/dvc repro && $(BIN)/dvc push

ui: $(VENV)/.installed ## The MLflow UI on 127.0.0.1:$(UI_PORT) against the project's store (+ the Prefect UI's address when a server runs); Ctrl-C stops it
	$(BIN)/stfn ui --port $(UI_PORT)

servers: $(VENV)/.installed ## Team mode: Prefect + MLflow servers on 127.0.0.1 (PostgreSQL when STFN_DB_URL / STFN_PREFECT_DB_URL are set)
	$(BIN)/stfn servers start

deploy: $(VENV)/.installed ## Scheduled retraining: work pool + prefect.yaml deployments (schedule from params.yaml) + a worker; needs `make servers`
	$(BIN)/stfn deploy

servers-stop: $(VENV)/.installed ## Stop exactly the servers `make servers` started (PID files in .stfn/servers)
	$(BIN)/stfn servers stop

clean: ## Remove pipeline outputs and local state (keeps .venv and the MLflow store)
	rm -rf data/features models reports .stfn/prefect
