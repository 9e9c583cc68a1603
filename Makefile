# Everything a user or CI runs. `make pipeline` and `make test` set up from nothing.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= movielens-100k-mm
export DAGSTER_HOME := $(CURDIR)/.dagster
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PYTHONUNBUFFERED := 1

.PHONY: setup data pipeline test test-fast lint ui clean-state

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(BIN)/.installed
	mkdir -p $(DAGSTER_HOME) && ln -sf ../dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# Real datasets from the DVC remote (../shared/dvc-store by default).
data: setup
	$(BIN)/dvc pull -q

# The main job: the whole pipeline for one dataset partition, through Dagster.
pipeline: data
	$(BIN)/dagster asset materialize -m orchestration.definitions --select '*' --partition $(DATASET)

test: data lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not smoke"

lint: setup
	$(BIN)/ruff check alignrec orchestration tests

clean-state:
	rm -rf .dagster/storage .dagster/history .dagster/schedules
