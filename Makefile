# The user's entry point. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
BENTOML := $(VENV)/bin/bentoml
SHARED ?= ../shared
# Offline copy of the data set; without it scikit-learn downloads the data.
NEWSGROUPS_ARCHIVE ?= $(wildcard $(SHARED)/data/20newsgroups/20news-bydate.tar.gz)
export NEWSGROUPS_ARCHIVE
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK := true
export SCIKIT_LEARN_DATA ?= $(CURDIR)/.data
PORT ?= 3000
OTLP_ENDPOINT ?= http://127.0.0.1:4317
OTLP_PROTOCOL ?= grpc
SAMPLE_RATE ?= 1.0
EXTRA_DATA ?=

include helm-config/charts.env

.PHONY: help setup train serve test unit lint format validate stack-bin e2e loadtest bench export-feedback \
	build cluster-up deploy dashboards port-forward cluster-down clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: ## Create .venv with the project, its test and load-test extras
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,load]'

train: ## Train, evaluate and save the model with its drift baseline (EXTRA_DATA=file.jsonl adds labelled records)
	$(PY) -m newsgroups_classifier.training $(if $(EXTRA_DATA),--extra-data $(EXTRA_DATA))

serve: ## Serve on 127.0.0.1:$(PORT) (trains first if there is no model); logs on stdout
	@$(BENTOML) models get newsgroups_classifier:latest >/dev/null 2>&1 || $(MAKE) train
	$(PY) -m newsgroups_classifier.deploy --otlp-endpoint $(OTLP_ENDPOINT) --protocol $(OTLP_PROTOCOL) \
		--sample-rate $(SAMPLE_RATE) --output $(BENTOML_HOME)/bentoml-local.yaml
	BENTOML_CONFIG=$(BENTOML_HOME)/bentoml-local.yaml $(BENTOML) serve \
		newsgroups_classifier.service:NewsgroupsClassifier --host 127.0.0.1 --port $(PORT)

test: lint stack-bin ## Lint, validate the deployment files, run every test including the end-to-end suite
	$(PY) -m pytest

unit: ## The tests without the end-to-end suite
	$(PY) -m pytest -m 'not e2e'

lint: ## ruff lint and format check
	$(VENV)/bin/ruff check src tests load_testing
	$(VENV)/bin/ruff format --check src tests load_testing

format: ## Format the code with ruff
	$(VENV)/bin/ruff check --fix src tests load_testing
	$(VENV)/bin/ruff format src tests load_testing

validate: ## Check manifests, Helm values, dashboards and alert rules offline
	$(PY) -m pytest tests/deploy

stack-bin: ## Build Prometheus, Loki, Promtail, Tempo and MinIO from the Go module proxy (cached)
	bash tests/e2e/stack/build.sh

e2e: stack-bin ## End to end against the real Prometheus, Loki, Promtail, Tempo and MinIO
	$(PY) -m pytest tests/e2e

loadtest: ## Locust, headless, against a local service, with pass/fail thresholds
	$(PY) load_testing/run_loadtest.py

bench: ## Side-by-side benchmark: model alone, plain FastAPI, our service with and without telemetry
	$(PY) load_testing/benchmark.py

export-feedback: ## Export prediction events and feedback from Loki as a labelled JSON Lines dataset
	$(PY) -m newsgroups_classifier.export $(EXPORT_ARGS)

clean: ## Remove local state (models, caches, reports)
	rm -rf .bentoml .data reports .pytest_cache .ruff_cache

# --- cluster ---------------------------------------------------------------------------------------
# (cluster targets: build, cluster-up, deploy, dashboards, port-forward, cluster-down)
