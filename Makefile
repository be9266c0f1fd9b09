# leanhpo: `make all` runs the default study, `make test` runs the tests.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# The stamp changes whenever the lock or the project metadata changes, so a second
# `make install` with nothing new is a no-op.
STAMP := $(VENV)/.leanhpo-installed
# Trials run one at a time; each uses the cores Snakemake is given (see rules/hpo.smk).
CORES ?= $(shell nproc 2>/dev/null || echo 1)
CONTAINER ?= $(shell command -v docker || command -v podman)
IMAGE ?= leanhpo:cpu
# pip warns once per package about mirror folders that do not exist on this machine.
PIPFILTER := { grep -v "is ignored: it is neither a file nor a directory" || true; }

export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PYTHONDONTWRITEBYTECODE := 1
# WordNet and stopwords for the TextAttack augmentation (`make nltk-data`; git-ignored).
export NLTK_DATA := $(CURDIR)/.nltk_data

.PHONY: help install nltk-data all resume test lint clean build shell train-container report dashboard ui

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv from requirements.lock (idempotent)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" 2>&1 | $(PIPFILTER)
	$(BIN)/python -m pip install --quiet -r requirements.lock 2>&1 | $(PIPFILTER)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | $(PIPFILTER)
	@touch $(STAMP)

all: install nltk-data ## Run (or continue) the default study from config.yaml
	$(BIN)/snakemake --cores $(CORES)

resume: install nltk-data ## Continue after a crash or kill -9 (no manual unlock needed)
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete

# Local viewers only: both listen on 127.0.0.1. CONFIG_URL prints a URL of the config, its
# ${ENV_VAR} passwords filled in from the environment.
CONFIG ?= config.yaml
DASHBOARD_PORT ?= 8080
UI_PORT ?= 5000
CONFIG_URL = $(BIN)/python -c "import sys; from leanhpo.config import load_config_file; from leanhpo.urls import expand_env_references; c = load_config_file('$(CONFIG)'); print(expand_env_references(c[sys.argv[1]][sys.argv[2]], '.'.join(sys.argv[1:])))"

report: install ## Build report.html from the finished study (= snakemake --report report.html)
	$(BIN)/snakemake --report report.html

dashboard: install ## Serve optuna-dashboard for the study storage on 127.0.0.1:DASHBOARD_PORT (8080)
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) "$$($(CONFIG_URL) study storage)"

ui: install ## Serve the MLflow UI for the tracking store on 127.0.0.1:UI_PORT (5000)
	@uri="$$($(CONFIG_URL) tracking uri)"; case "$$uri" in \
	  http*) echo "The tracking store is a server: open $$uri";; \
	  *) $(BIN)/mlflow ui --host 127.0.0.1 --port $(UI_PORT) --backend-store-uri "$$uri";; esac

nltk-data: install ## Fetch WordNet + stopwords into .nltk_data, offline fallback via Debian (idempotent)
	$(BIN)/python -m leanhpo.data.nltk_data --dest $(NLTK_DATA)

test: install nltk-data ## Run the test suite with coverage
	$(BIN)/pytest

lint: install ## ruff (lint + format), mypy, snakemake --lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint

clean: ## Remove the study outputs and Snakemake state (keeps .venv)
	rm -rf experiments .snakemake mlruns report.html .pytest_cache .coverage

build: ## Build the CPU container image
	$(CONTAINER) build -t $(IMAGE) .

shell: build ## Open a shell in the container
	$(CONTAINER) run --rm -it -v $(CURDIR)/experiments:/app/experiments $(IMAGE) bash

train-container: build ## Run the study inside the container
	$(CONTAINER) run --rm -v $(CURDIR)/experiments:/app/experiments $(IMAGE) snakemake --cores $(CORES) --rerun-incomplete
