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
IMAGE ?= leanhpo:cpu
# Container engine: docker when its engine answers, else podman through podman-local.sh (a
# local Debian base image, for machines with no Docker engine and no registry), else podman.
# Worked out once, and only by the container targets.
PODMAN_LOCAL ?= $(abspath ../shared/tools/podman-local.sh)
CONTAINER ?= $(eval CONTAINER := $(shell \
  if docker info >/dev/null 2>&1; then echo docker; \
  elif [ -x "$(PODMAN_LOCAL)" ]; then echo "$(PODMAN_LOCAL) podman"; \
  else command -v podman || true; fi))$(CONTAINER)
# The torch wheel folder of pip's find-links (machines without the PyTorch index), passed to
# the build as the `wheels` context when it holds a torch wheel.
WHEELS ?= $(eval WHEELS := $(firstword $(PIP_FIND_LINKS) $(shell \
  { $(BIN)/pip config get global.find-links || pip3 config get global.find-links; } 2>/dev/null)))$(WHEELS)
# Where train-container writes (a host folder, owned by you) and extra config overlays.
EXPERIMENTS ?= $(CURDIR)/experiments
OVERLAY ?=
# pip warns once per package about mirror folders that do not exist on this machine.
PIPFILTER := { grep -v "is ignored: it is neither a file nor a directory" || true; }

export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PYTHONDONTWRITEBYTECODE := 1
# WordNet and stopwords for the TextAttack augmentation (`make nltk-data`; git-ignored).
export NLTK_DATA := $(CURDIR)/.nltk_data

.PHONY: help install nltk-data all resume test lint clean build shell train-container test-container container-engine report dashboard ui

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv from requirements.lock (idempotent)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" 2>&1 | $(PIPFILTER)
	$(BIN)/python -m pip install --quiet -r requirements.lock 2>&1 | $(PIPFILTER)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | $(PIPFILTER)
	@touch $(STAMP)

# Snakemake's per-job blocks (input, output, reason, ...) would bury leanhpo's one line per epoch;
# SNAKEMAKE_FLAGS= shows them again.
SNAKEMAKE_FLAGS ?= --quiet rules

all: install nltk-data ## Run (or continue) the default study from config.yaml
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_FLAGS)

resume: install nltk-data ## Continue after a crash or kill -9 (no manual unlock needed)
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete $(SNAKEMAKE_FLAGS)

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
	@echo "MLflow 3.17 shows experiments as GenAI until its sidebar switch says 'Model training' (README.md)"
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

# docker/podman run as you, with a writable HOME: files in $(EXPERIMENTS) stay yours.
CONTAINER_RUN = $(CONTAINER) run --rm --user $$(id -u):$$(id -g) --env HOME=/tmp \
  --volume $(abspath $(EXPERIMENTS)):/app/experiments \
  $(foreach file,$(OVERLAY),--volume $(abspath $(file)):/overlays-host/$(notdir $(file)):ro)
BUILD_ARGS = $(strip $(if $(wildcard $(WHEELS)/torch-*.whl),--build-context wheels=$(WHEELS)) \
  $(foreach var,PIP_INDEX_URL PIP_EXTRA_INDEX_URL HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy,$(if $($(var)),--build-arg $(var))))

container-engine:
	@if [ -z "$(CONTAINER)" ]; then \
	  echo "No container engine (CONTAINER is empty): 'docker info' fails, $(PODMAN_LOCAL) does not exist, no podman." >&2; \
	  echo "Install docker or podman, or set CONTAINER=... (or PODMAN_LOCAL=/path/to/podman-local.sh)." >&2; exit 1; fi
	@case "$(CONTAINER)" in "$(PODMAN_LOCAL) "*) $(PODMAN_LOCAL) setup;; esac

build: container-engine ## Build the CPU container image IMAGE (leanhpo:cpu; CUDA: see the Dockerfile)
	$(CONTAINER) build $(if $(filter $(PODMAN_LOCAL),$(CONTAINER)),--pull=never) $(BUILD_ARGS) -t $(IMAGE) .

shell: build ## Open a shell in the container (experiments/ mounted)
	mkdir -p $(EXPERIMENTS)
	$(CONTAINER_RUN) -it $(IMAGE) bash

train-container: build ## Run (or continue) the study in the container; OVERLAY=x.yaml adds overlays
	mkdir -p $(EXPERIMENTS)
	$(CONTAINER_RUN) $(IMAGE) snakemake --cores $(CORES) --rerun-incomplete \
	  $(if $(OVERLAY),--configfile config.yaml $(addprefix /overlays-host/,$(notdir $(OVERLAY))))

test-container: ## Build the image and run the tiny test study in it, in a temporary folder
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(MAKE) --no-print-directory train-container CONTAINER='$(CONTAINER)' IMAGE='$(IMAGE)' \
	  EXPERIMENTS=$$tmp OVERLAY=tests/config/tiny.yaml CORES=1 \
	  && test -s $$tmp/tiny/study_report.json \
	  && test "$$(stat -c %u $$tmp/tiny/study_report.json)" = "$$(id -u)" \
	  && echo "test-container: the tiny study ran in $(IMAGE); its files are owned by uid $$(id -u)"
