# Everything a user or CI runs. `make pipeline` and `make test` set up from nothing.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= movielens-100k-mm
# The benchmark's profile: quick (one seed, each model at its pinned point) or full (the grids
# and 3 seeds: the paper protocol), e.g. `BENCHMARK=full make pipeline`.
BENCHMARK ?= quick
export ALIGNREC_BENCHMARK := $(BENCHMARK)
export DAGSTER_HOME := $(CURDIR)/.dagster
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup setup-scale data pipeline repro test test-fast test-scale lint ui serve clean-state

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(BIN)/.installed
	mkdir -p $(DAGSTER_HOME) && ln -sfn $(CURDIR)/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# Scale-out packages (dagster-celery, dagster-postgres, redis, psycopg2) for CI and
# deployments only, over the default install; --no-deps, see requirements-scale.lock.
$(BIN)/.installed-scale: $(BIN)/.installed requirements-scale.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements-scale.lock
	touch $@

setup-scale: setup $(BIN)/.installed-scale

# Real datasets from the DVC remote (../shared/dvc-store by default); only data.dvc, as the
# pipeline's outputs in dvc.lock are rebuilt by `make repro`, not pulled.
data: setup
	$(BIN)/dvc pull -q data.dvc

# The main job: the whole pipeline for one dataset partition, through Dagster: data validation,
# encoders, stage 1, the three evaluation protocols, stage 2 (AlignRec, registered) and the
# benchmark of all twelve models ($(BENCHMARK) profile). The baselines' own training assets
# (group training, one per baseline) are left to the UI: the benchmark trains every baseline.
PIPELINE_SELECTION := not group:training or key:alignrec_model
pipeline: data
	@$(BIN)/python -c 'import sys; from alignrec.data.registry import check_registered as c; sys.exit(c(sys.argv[1]))' '$(DATASET)'
	$(BIN)/dagster asset materialize -m orchestration.definitions --select '$(PIPELINE_SELECTION)' --partition $(DATASET)

# The same pipeline through DVC (dvc.yaml, params.yaml's dataset): reruns only the stages whose
# code, params or inputs changed. Each stage is a Dagster run; the stages' `python` is the venv's.
# `make repro DATASET=NAME` (or DATASET in the environment) first sets params.yaml's dataset to
# NAME, as `dvc exp run -S dataset=NAME` does (the new value stays in params.yaml), so DATASET
# picks the dataset here as it does for `make pipeline`; without DATASET, params.yaml decides.
# An unregistered NAME, or one without item content (build it with `make pipeline`), is refused
# before params.yaml changes.
repro: data
ifeq ($(origin DATASET),file)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro
else
	@$(BIN)/python -m orchestration.repro_dataset '$(DATASET)'
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc exp run -S 'dataset=$(DATASET)'
endif

test: data lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not smoke"

# The scale-out tests alone (tests/scale): Redis, PostgreSQL, Celery workers, an MLflow server
# and multi-node torchrun on loopback. Needs `apt-get install redis-server postgresql`.
test-scale: setup-scale
	$(BIN)/python -m pytest -q -m scale

lint: setup
	$(BIN)/ruff check alignrec orchestration tests scripts benchmarks

# The Dagster UI (127.0.0.1:3000, with the daemon for schedules and sensors) and the MLflow UI
# (127.0.0.1:5000) together; Ctrl-C stops both.
ui: setup
	scripts/ui.sh

# The registered champion of DATASET over HTTP on 127.0.0.1:$(PORT) (POST /invocations), from
# the project's MLflow store (or $$MLFLOW_TRACKING_URI) with the venv's mlflow and uvicorn;
# MODEL and PORT override. Ctrl-C stops it.
MODEL ?= models:/alignrec-$(DATASET)@champion
PORT ?= 5001
serve: setup
	$(BIN)/alignrec serve --model '$(MODEL)' --port $(PORT)

clean-state:
	rm -rf .dagster/storage .dagster/history .dagster/schedules
