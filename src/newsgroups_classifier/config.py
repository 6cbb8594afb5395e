"""Settings, declared once: each field is read from the environment variable of its name in capitals (the
Kubernetes ConfigMaps and Secrets set them), else its default. One class per program: the service, the
model store (its init container, the retraining Job, `make deploy`), the retraining Job and its trigger."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveFloat, PositiveInt, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .model import MODEL_NAME

# At shutdown, how long the worker may spend writing queued log lines and exporting pending spans
# (the Deployment's grace period is 30 s).
SHUTDOWN_FLUSH_SECONDS = 5.0


# An empty variable counts as unset; a bad value stops the program at start, naming the variable.
FROM_ENVIRONMENT = SettingsConfigDict(
    frozen=True, env_ignore_empty=True, alias_generator=str.upper, validate_by_name=True
)


class Settings(BaseSettings):
    # Other variables are the OpenTelemetry SDK's and BentoML's, also when given as arguments (the
    # ConfigMap's whole environment, as tools read it).
    model_config = SettingsConfigDict(**FROM_ENVIRONMENT, extra="ignore")

    model_tag: str = f"{MODEL_NAME}:latest"
    workers: PositiveInt = 1
    max_body_bytes: PositiveInt = 1024 * 1024
    max_batch_size: PositiveInt = 64  # texts one /predict_batch request may carry
    # Adaptive batching merges concurrent requests into one model call (off: a model call per request,
    # the least latency at low load, the most CPU per request); BentoML answers 503 to a request that
    # would wait longer than this for its batch.
    adaptive_batching: Literal["on", "off"] = "on"
    adaptive_batch_max_latency_ms: PositiveInt = 1000
    # Privacy: raw user text is never logged unless asked for.
    log_text: Literal["none", "hash", "prefix"] = "none"
    log_text_chars: PositiveInt = 200
    feedback_signing_key: SecretStr = SecretStr("")
    feedback_max_age_seconds: PositiveInt = 7 * 24 * 3600
    # Off: no prediction events, ML metrics or inference spans (BentoML's own telemetry has its own
    # switches). For measuring what telemetry costs, not for production.
    telemetry: Literal["on", "off"] = "on"
    # How long a client may take to send a request's body before it gets a 408 (BentoML answers a
    # request still unanswered after its `traffic.timeout` with a 504: keep this well below).
    body_timeout_seconds: PositiveFloat = 10.0
    # How spans are exported; the OpenTelemetry SDK itself reads the other OTEL_* variables (endpoint,
    # timeout, sampler, resource attributes).
    otel_exporter_otlp_protocol: Literal["grpc", "http/protobuf"] = "grpc"
    deployment_environment: str = "local"
    pod_name: str = ""
    pod_namespace: str = ""

    @property
    def telemetry_on(self) -> bool:
        return self.telemetry == "on"


class StoreSettings(BaseSettings):
    """Where published models are kept: an S3 bucket (MinIO in the cluster, or any S3). Credentials are
    boto3's own (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from a Secret, or a role of the pod)."""

    model_config = FROM_ENVIRONMENT

    # Empty: AWS S3 in `model_store_region`; else the S3 endpoint, e.g. MinIO's Service.
    model_store_endpoint: str = ""
    model_store_bucket: str = "newsgroups-models"
    model_store_region: str = "us-east-1"


class RetrainingSettings(BaseSettings):
    """The retraining Job (retraining.py): where the labelled predictions are, what it changes, the gate."""

    model_config = FROM_ENVIRONMENT

    # The data loop's export (export.py) reads Loki's query API: these are its own variables.
    loki_url: str = "http://loki.observability.svc.cluster.local:3100"
    loki_tenant: str = ""
    loki_selector: str = '{namespace="newsgroups", container="newsgroups-classifier"}'
    feedback_since: str = "7d"
    # What a published candidate changes: the model version pods fetch, and the Deployment to roll out.
    model_configmap: str = "newsgroups-classifier-model"
    deployment: str = "newsgroups-classifier"
    # The quality gate (gate.py), and training's own floor (training.py).
    gate_test_macro_f1_tolerance: float = 0.005
    gate_feedback_accuracy_tolerance: float = 0.02
    gate_min_holdout_labels: PositiveInt = 30
    min_macro_f1: float = 0.85


class TriggerSettings(BaseSettings):
    """The retraining trigger (retraining_trigger.py): which template it starts, and how often at most."""

    model_config = FROM_ENVIRONMENT

    # The suspended CronJob whose jobTemplate is the retraining Job (`make retrain` starts it too).
    retraining_cronjob: str = "newsgroups-retraining"
    # No new retraining until this long after the last one started (alert or by hand).
    retraining_cooldown_seconds: PositiveInt = 3600
    # How often the Jobs are looked at, to count how they ended.
    retraining_poll_seconds: PositiveFloat = 5.0
    trigger_port: PositiveInt = 8080
