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
# The benchmark's load generator, from Debian's packages (bookworm), pinned.
WRK_VERSION ?= 4.1.0-3+b2
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

include helm-config/charts.env

.PHONY: help setup train serve test unit fuzz lint format validate stack-bin e2e loadtest bench bench-tools export-feedback \
	build cluster-up deploy dashboards port-forward cluster-down clean cluster-bin cluster-packages cluster-images \
	stack-images cluster-test deploy-tools slo-rules publish-model models rollback retrain

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

setup: ## Create .venv with the project, its test and load-test extras
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,load]'

train: ## Train, evaluate and save the model with its drift baseline (EXTRA_DATA=file.jsonl adds labelled records)
	$(PY) -m newsgroups_classifier.training $(if $(EXTRA_DATA),--extra-data $(EXTRA_DATA))

serve: ## Serve on 127.0.0.1:3000 (PORT=... to change), training first if there is no model; logs on stdout
	@$(BENTOML) models get newsgroups_classifier:latest >/dev/null 2>&1 || $(MAKE) train
	$(PY) -m newsgroups_classifier.local_config --otlp-endpoint $(OTLP_ENDPOINT) --protocol $(OTLP_PROTOCOL) \
		--sample-rate $(SAMPLE_RATE) --bentoml-config $(BENTOML_HOME)/bentoml.yaml --env $(BENTOML_HOME)/service.env
	set -a && . $(BENTOML_HOME)/service.env && set +a && BENTOML_CONFIG=$(BENTOML_HOME)/bentoml.yaml \
		$(BENTOML) serve newsgroups_classifier.service:NewsgroupsClassifier --host 127.0.0.1 --port $(PORT)

test: lint stack-bin deploy-tools cluster-bin cluster-images stack-images ## Lint, validate the deployment files, run every test including the end-to-end and cluster tiers
	$(PY) -m pytest

unit: ## The in-process tests (tests/unit: no server, no process, nothing built; about 30 s)
	$(PY) -m pytest tests/unit

# `make fuzz`: how long the generated cases run (seconds; in a default `make test`, about 70 s), and their
# seed, new each run unless given (`make fuzz FUZZ_SEED=...` runs the same cases again).
FUZZ_SECONDS ?= 1800
ifndef FUZZ_SEED
FUZZ_SEED := $(shell date +%s)
endif

fuzz: ## The fuzzing tier (tests/fuzz) for about FUZZ_SECONDS (1800): schemathesis and Hypothesis against a real service, seed FUZZ_SEED
	@echo "fuzzing for about $(FUZZ_SECONDS) s with FUZZ_SEED=$(FUZZ_SEED)"
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest tests/fuzz --timeout 0

lint: ## ruff lint and format check
	$(VENV)/bin/ruff check src tests load_testing
	$(VENV)/bin/ruff format --check src tests load_testing

format: ## Format the code with ruff
	$(VENV)/bin/ruff check --fix src tests load_testing
	$(VENV)/bin/ruff format src tests load_testing

validate: stack-bin deploy-tools ## Check manifests, Helm values, dashboards and alert rules offline
	$(PY) -m pytest tests/deploy

stack-bin: ## Build Prometheus, Alertmanager and the OpenTelemetry Collector from the Go module proxy (cached by version)
	bash tests/e2e/stack/build.sh

cluster-bin: ## Build the cluster tier's Kubernetes v1.35.4 binaries, etcd, CoreDNS and metrics-server from the Go module proxy (cached)
	bash tests/cluster/build.sh

cluster-packages: ## Install the cluster tier's Debian packages at pinned versions (containerd, runc, CNI plugins, buildah, ...)
	bash tests/cluster/packages.sh

cluster-images: cluster-packages ## Make the base image `make build` builds on here, and the pause image, from Debian packages (cached)
	bash tests/cluster/images.sh

stack-images: stack-bin cluster-bin cluster-packages ## Images of the collector, Prometheus, Alertmanager and metrics-server from `make stack-bin`'s and `make cluster-bin`'s binaries, for the cluster tier (cached)
	bash tests/cluster/images.sh otelcol prometheus alertmanager metrics-server

cluster-test: cluster-bin cluster-images stack-images deploy-tools ## A real single-node Kubernetes: metrics-server, the collector, Prometheus and Alertmanager from our values, `kubectl apply -f manifests/`, the `make build` image served, the HPA scaling under load, alerts delivered, charts dry-run
	$(PY) -m pytest tests/cluster

e2e: stack-bin deploy-tools ## End to end against the real collector and Prometheus (contract tests where Loki and Tempo answer)
	$(PY) -m pytest tests/e2e

loadtest: ## Locust, headless, against a local service, with pass/fail thresholds
	PYTHONPATH=tests $(PY) load_testing/run_loadtest.py

bench: bench-tools ## Side by side: ours against FastAPI (plain, same telemetry), telemetry costs, speed levers
	PYTHONPATH=tests $(PY) load_testing/benchmark.py

bench-tools: ## Install the benchmark's load generator from Debian's packages: wrk at WRK_VERSION
	@dpkg-query -W -f='$${Version}' wrk 2>/dev/null | grep -qxF '$(WRK_VERSION)' \
		|| { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends wrk=$(WRK_VERSION); }

export-feedback: ## Export prediction events and feedback from Loki as a labelled JSON Lines dataset
	$(PY) -m newsgroups_classifier.export $(EXPORT_ARGS)

clean: ## Remove local state (models, caches, reports)
	rm -rf .bentoml .data reports .pytest_cache .ruff_cache

# --- cluster ---------------------------------------------------------------------------------------
# From an empty cluster to the Grafana drilldown: docs/deployment.md. Chart versions and repositories come
# from helm-config/charts.env; each release reads helm-config/<release>/values.yaml.
KUBECTL ?= kubectl
HELM ?= helm
OBSERVABILITY_NAMESPACE := observability
SERVICE_NAMESPACE := newsgroups
# The image reference lives in manifests/deployment.yaml; `make build deploy IMAGE=...` overrides it.
MANIFEST_IMAGE := $(shell awk '$$1 == "image:" {print $$2; exit}' manifests/deployment.yaml)
IMAGE ?= $(MANIFEST_IMAGE)
# Extra `bentoml containerize` options, e.g. another builder: CONTAINERIZE_OPTS="--backend buildah".
CONTAINERIZE_OPTS ?=
DASHBOARDS_CONFIGMAP := newsgroups-dashboards
GRAFANA_PORT ?= 3001
PROMETHEUS_PORT ?= 9090
# release -> chart, in install order: MinIO first (Loki and Tempo store in it), Grafana last. With another
# S3 store (docs/deployment.md): `make cluster-up RELEASES="loki tempo prometheus opentelemetry-collector grafana"`.
# LOG_AGENT: which agent ships the pods' logs to Loki, the OpenTelemetry Collector (default) or Promtail;
# the collector runs either way (traces, span metrics), with Promtail without its logs pipeline.
LOG_AGENT ?= opentelemetry-collector
ifeq ($(filter $(LOG_AGENT),opentelemetry-collector promtail),)
$(error LOG_AGENT must be opentelemetry-collector or promtail, not '$(LOG_AGENT)')
endif
RELEASES ?= minio loki tempo prometheus opentelemetry-collector $(filter promtail,$(LOG_AGENT)) grafana
CHART_minio := $(MINIO_REPO_NAME)/minio --version $(MINIO_CHART_VERSION)
CHART_loki := $(GRAFANA_COMMUNITY_REPO_NAME)/loki --version $(LOKI_CHART_VERSION)
CHART_tempo := $(GRAFANA_COMMUNITY_REPO_NAME)/tempo --version $(TEMPO_CHART_VERSION)
CHART_promtail := $(GRAFANA_REPO_NAME)/promtail --version $(PROMTAIL_CHART_VERSION)
CHART_prometheus := $(PROMETHEUS_COMMUNITY_REPO_NAME)/prometheus --version $(PROMETHEUS_CHART_VERSION)
CHART_opentelemetry-collector := $(OPEN_TELEMETRY_REPO_NAME)/opentelemetry-collector \
	--version $(OPENTELEMETRY_COLLECTOR_CHART_VERSION)
CHART_grafana := $(GRAFANA_COMMUNITY_REPO_NAME)/grafana --version $(GRAFANA_CHART_VERSION)
CHART_metrics-server := $(METRICS_SERVER_REPO_NAME)/metrics-server --version $(METRICS_SERVER_CHART_VERSION)
# metrics-server serves the resource metrics API the HPA scales on. Most clusters have one already
# (managed clusters, k3s, minikube's addon): `make cluster-up` installs ours only when nothing serves
# that API, and upgrades ours (the release in the observability namespace) when it is there.
METRICS_APISERVICE := v1beta1.metrics.k8s.io
# With LOG_AGENT=promtail the collector leaves the pods' logs to Promtail: no log files mounted, no logs
# pipeline (its file_log receiver stays configured, unused), and it runs as the image's user, not root.
SET_opentelemetry-collector := $(if $(filter promtail,$(LOG_AGENT)),--set presets.logsCollection.enabled=false \
	--set config.service.pipelines.logs=null --set securityContext.runAsUser=10001 \
	--set securityContext.runAsGroup=10001 --set securityContext.runAsNonRoot=true)
# The model store (docs/deployment.md) as this machine reaches it: by default MinIO's Service through
# `kubectl -n observability port-forward svc/minio 9000:9000`; another S3: its endpoint (empty for AWS S3),
# with its credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (else the cluster's Secret's are used).
MODEL_STORE_ENDPOINT ?= http://127.0.0.1:9000
export MODEL_STORE_ENDPOINT
MODEL_NAME := newsgroups_classifier
# A published version, for `make rollback` (and `make deploy`, instead of publishing the local model).
MODEL_VERSION ?=
# Which version the pods serve (the init container fetches it), and the pod template's annotation whose
# change rolls them out (manifests/deployment.yaml).
MODEL_CONFIGMAP := newsgroups-classifier-model
MODEL_ANNOTATION := newsgroups-classifier/model-tag
RETRAINING_CRONJOB := newsgroups-retraining
# Manifests that run the image, which `make deploy IMAGE=...` sets.
IMAGE_MANIFESTS := manifests/deployment.yaml manifests/retraining.yaml
# Where Alertmanager posts every notification (docs/deployment.md, "Alerts"): kept in the Secret
# alertmanager-webhook, which `make cluster-up` creates unless it exists. The default is a relay of yours
# (to chat, paging or e-mail) behind a Service named alert-webhook in the observability namespace.
ALERT_WEBHOOK_URL ?= http://alert-webhook.$(OBSERVABILITY_NAMESPACE).svc.cluster.local:8080/
# 32 random letters and digits, made by the shell running the recipe (never echoed).
RANDOM_SECRET := $$(LC_ALL=C tr -dc A-Za-z0-9 </dev/urandom | head -c 32)

# $(call install,release): install or upgrade a release with its chart, version and values.
install = $(HELM) upgrade --install $(1) $(CHART_$(1)) --namespace $(OBSERVABILITY_NAMESPACE) \
	--values helm-config/$(1)/values.yaml $(SET_$(1)) --wait --timeout 10m

# $(call ensure_secret,namespace,name,--from-literal=...): create the Secret unless it exists. The model
# store's: the classifier's pods and the retraining Job read model-store-credentials; MinIO makes its user
# newsgroups-models with the same secret key, copied to minio-model-store-user (helm-config/minio/values.yaml).
define ensure_secret
	@$(KUBECTL) -n $(1) get secret $(2) >/dev/null 2>&1 && echo "secret $(1)/$(2) exists: kept" \
		|| { $(KUBECTL) -n $(1) create secret generic $(2) $(3) >/dev/null && echo "secret $(1)/$(2) created"; }
endef

# The store's credentials for a command of this machine: the environment's, else the cluster's Secret.
store_credentials = $(if $(AWS_ACCESS_KEY_ID),,AWS_ACCESS_KEY_ID="$$($(call secret_value,AWS_ACCESS_KEY_ID))" \
	AWS_SECRET_ACCESS_KEY="$$($(call secret_value,AWS_SECRET_ACCESS_KEY))")
secret_value = $(KUBECTL) -n $(SERVICE_NAMESPACE) get secret model-store-credentials -o jsonpath='{.data.$(1)}' | base64 -d

publish = $(store_credentials) $(PY) -m newsgroups_classifier.model_store publish
# $(call model_configmap,TAG): the ConfigMap naming the version the pods fetch.
model_configmap = $(KUBECTL) -n $(SERVICE_NAMESPACE) create configmap $(MODEL_CONFIGMAP) --from-literal=MODEL_TAG=$(1) \
	--dry-run=client -o yaml | $(KUBECTL) apply -f -
# The pod template's annotation naming it: its change is the rollout.
model_annotation = '{"spec":{"template":{"metadata":{"annotations":{"$(MODEL_ANNOTATION)":"'$(1)'"}}}}}'

build: ## Build the Bento (the service, no model) and containerize it as IMAGE (default: manifests/deployment.yaml's)
	$(BENTOML) build
	$(BENTOML) containerize newsgroups-classifier:latest -t $(IMAGE) $(CONTAINERIZE_OPTS)

cluster-up: ## Namespaces, secrets, dashboards, metrics-server (unless the cluster has one) and every chart of the observability stack (LOG_AGENT=promtail: Promtail ships the logs)
	$(KUBECTL) apply -f manifests/00-namespace.yaml
	$(KUBECTL) create namespace $(OBSERVABILITY_NAMESPACE) --dry-run=client -o yaml | $(KUBECTL) apply -f -
	$(call ensure_secret,$(OBSERVABILITY_NAMESPACE),minio-credentials,--from-literal=rootUser=minio-admin --from-literal=rootPassword=$(RANDOM_SECRET))
	$(call ensure_secret,$(OBSERVABILITY_NAMESPACE),grafana-admin,--from-literal=admin-user=admin --from-literal=admin-password=$(RANDOM_SECRET))
	$(call ensure_secret,$(SERVICE_NAMESPACE),newsgroups-classifier-feedback,--from-literal=FEEDBACK_SIGNING_KEY=$(RANDOM_SECRET))
	$(call ensure_secret,$(SERVICE_NAMESPACE),model-store-credentials,--from-literal=AWS_ACCESS_KEY_ID=newsgroups-models --from-literal=AWS_SECRET_ACCESS_KEY=$(RANDOM_SECRET))
	$(call ensure_secret,$(OBSERVABILITY_NAMESPACE),minio-model-store-user,--from-literal=secretKey="$$($(call secret_value,AWS_SECRET_ACCESS_KEY))")
	$(call ensure_secret,$(OBSERVABILITY_NAMESPACE),alertmanager-webhook,--from-literal=url=$(ALERT_WEBHOOK_URL))
	$(HELM) repo add --force-update $(GRAFANA_COMMUNITY_REPO_NAME) $(GRAFANA_COMMUNITY_REPO_URL)
	$(HELM) repo add --force-update $(GRAFANA_REPO_NAME) $(GRAFANA_REPO_URL)
	$(HELM) repo add --force-update $(PROMETHEUS_COMMUNITY_REPO_NAME) $(PROMETHEUS_COMMUNITY_REPO_URL)
	$(HELM) repo add --force-update $(MINIO_REPO_NAME) $(MINIO_REPO_URL)
	$(HELM) repo add --force-update $(OPEN_TELEMETRY_REPO_NAME) $(OPEN_TELEMETRY_REPO_URL)
	$(HELM) repo add --force-update $(METRICS_SERVER_REPO_NAME) $(METRICS_SERVER_REPO_URL)
	$(HELM) repo update $(GRAFANA_COMMUNITY_REPO_NAME) $(GRAFANA_REPO_NAME) $(PROMETHEUS_COMMUNITY_REPO_NAME) \
		$(MINIO_REPO_NAME) $(OPEN_TELEMETRY_REPO_NAME) $(METRICS_SERVER_REPO_NAME)
	$(MAKE) --no-print-directory dashboards
	if $(HELM) status metrics-server --namespace $(OBSERVABILITY_NAMESPACE) >/dev/null 2>&1 \
		|| ! $(KUBECTL) get apiservice $(METRICS_APISERVICE) >/dev/null 2>&1; then \
		$(call install,metrics-server) ; \
	else echo "$(METRICS_APISERVICE) is served by another component: metrics-server not installed"; fi
	$(foreach release,$(RELEASES),$(call install,$(release)) && ) true
	@echo "Grafana: make port-forward, then http://localhost:$(GRAFANA_PORT) as admin; the password:"
	@echo "  $(KUBECTL) -n $(OBSERVABILITY_NAMESPACE) get secret grafana-admin -o jsonpath='{.data.admin-password}' | base64 -d"

publish-model: ## Publish the local model (newsgroups_classifier:latest) to the model store; prints its tag
	@$(publish)

models: ## The model versions published in the model store, newest first, and the one the pods serve
	@$(store_credentials) $(PY) -m newsgroups_classifier.model_store list
	@echo "serving: $$($(KUBECTL) -n $(SERVICE_NAMESPACE) get configmap $(MODEL_CONFIGMAP) -o jsonpath='{.data.MODEL_TAG}')"

# The model first (the pods' init container fetches it), then the manifests running IMAGE, the classifier's
# with the model's annotation on its pod template (a new version rolls the pods out, the same one nothing).
deploy: ## Publish the local model (or serve MODEL_VERSION), deploy the service (manifests/) running IMAGE on it, wait for the rollout
	tag=$(if $(MODEL_VERSION),$(MODEL_NAME):$(MODEL_VERSION),$$($(publish))) && \
	$(KUBECTL) apply $(addprefix -f ,$(sort $(filter-out $(IMAGE_MANIFESTS),$(wildcard manifests/*.yaml)))) && \
	$(call model_configmap,$$tag) && \
	sed 's|image: $(MANIFEST_IMAGE)$$|image: $(IMAGE)|' manifests/retraining.yaml | $(KUBECTL) apply -f - && \
	sed 's|image: $(MANIFEST_IMAGE)$$|image: $(IMAGE)|' manifests/deployment.yaml | $(KUBECTL) patch --local -f - \
		--type merge -p $(call model_annotation,$$tag) -o yaml | $(KUBECTL) apply -f -
	$(KUBECTL) -n $(SERVICE_NAMESPACE) rollout status deployment/newsgroups-classifier --timeout 5m

rollback: ## Serve the published MODEL_VERSION (`make models` lists them): MODEL_TAG and a rollout, no build
	@test -n "$(MODEL_VERSION)" || { echo "usage: make rollback MODEL_VERSION=<version> (see make models)" >&2; exit 1; }
	$(call model_configmap,$(MODEL_NAME):$(MODEL_VERSION))
	$(KUBECTL) -n $(SERVICE_NAMESPACE) patch deployment/newsgroups-classifier --type merge \
		-p $(call model_annotation,$(MODEL_NAME):$(MODEL_VERSION))
	$(KUBECTL) -n $(SERVICE_NAMESPACE) rollout status deployment/newsgroups-classifier --timeout 5m

retrain: ## Start the retraining Job by hand, as an alert does (its template: manifests/retraining.yaml)
	$(KUBECTL) -n $(SERVICE_NAMESPACE) create job --from=cronjob/$(RETRAINING_CRONJOB) \
		$(RETRAINING_CRONJOB)-manual-$$(date +%s)
	@echo "follow it: $(KUBECTL) -n $(SERVICE_NAMESPACE) logs -f -l app.kubernetes.io/name=$(RETRAINING_CRONJOB) --tail=-1"

dashboards: ## Load dashboards/*.json into the ConfigMap Grafana provisions from (changes show within a minute)
	$(KUBECTL) -n $(OBSERVABILITY_NAMESPACE) create configmap $(DASHBOARDS_CONFIGMAP) --from-file=dashboards/ \
		--dry-run=client -o yaml | $(KUBECTL) apply --server-side --force-conflicts -f -

port-forward: ## Grafana on localhost:3001, Prometheus on :9090, the service on :3000 (Ctrl-C stops)
	trap 'kill $$(jobs -p) 2>/dev/null' EXIT; \
	$(KUBECTL) -n $(OBSERVABILITY_NAMESPACE) port-forward svc/grafana $(GRAFANA_PORT):80 & \
	$(KUBECTL) -n $(OBSERVABILITY_NAMESPACE) port-forward svc/prometheus-server $(PROMETHEUS_PORT):80 & \
	$(KUBECTL) -n $(SERVICE_NAMESPACE) port-forward svc/newsgroups-classifier $(PORT):3000 & \
	wait

# Promtail is uninstalled too, whichever LOG_AGENT the cluster was brought up with, and metrics-server if
# `make cluster-up` installed it (a metrics-server of the cluster's own lives elsewhere and stays).
cluster-down: ## Remove the service, every release, their volumes and both namespaces
	-$(KUBECTL) delete -f manifests/ --ignore-not-found
	-$(HELM) uninstall --namespace $(OBSERVABILITY_NAMESPACE) --ignore-not-found $(sort $(RELEASES) promtail metrics-server)
	-$(KUBECTL) delete namespace $(OBSERVABILITY_NAMESPACE) --ignore-not-found

# The SLO rules are generated into the Prometheus values (serverFiles, slo_rules.yml), between the BEGIN and
# END lines there (the file's last lines: yamllint is off for Sloth's layout from BEGIN on), from the SLO
# spec; `make validate` fails when they differ from what Sloth makes of it.
SLO_SPEC := helm-config/prometheus/slos.yaml
PROMETHEUS_VALUES := helm-config/prometheus/values.yaml
slo-rules: deploy-tools ## Generate the SLO recording and alert rules of helm-config/prometheus/values.yaml from helm-config/prometheus/slos.yaml (Sloth)
	set -o pipefail && sloth=$$(bash tests/deploy/tools.sh --print-path sloth) && \
	"$$sloth" validate --no-log --input $(SLO_SPEC) && \
	"$$sloth" generate --no-log --input $(SLO_SPEC) | sed -e '/^---$$/d' -e '/./,$$!d' -e 's/^/    /' -e 's/ *$$//' \
		>$(PROMETHEUS_VALUES).slo
	awk -v rules=$(PROMETHEUS_VALUES).slo '/^  # BEGIN slo_rules.yml/ { print; print "  # yamllint disable"; \
		print "  slo_rules.yml:"; while ((getline line < rules) > 0) print line; skip = 1; next } \
		/^  # END slo_rules.yml/ { skip = 0 } !skip' $(PROMETHEUS_VALUES) >$(PROMETHEUS_VALUES).new
	mv $(PROMETHEUS_VALUES).new $(PROMETHEUS_VALUES) && rm $(PROMETHEUS_VALUES).slo

deploy-tools: ## Build the pinned tools `make validate` needs (kube-score, Pod Security checker, helm, LogQL checker, Sloth) and package the metrics-server chart, cached
	bash tests/deploy/tools.sh
