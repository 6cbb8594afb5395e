"""Service settings, declared once: each field is read from the environment variable of its name in
capitals (the Kubernetes ConfigMap and Secret set them), else its default."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveFloat, PositiveInt, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .model import MODEL_NAME

# At shutdown, how long the worker may spend writing queued log lines and exporting pending spans
# (the Deployment's grace period is 30 s).
SHUTDOWN_FLUSH_SECONDS = 5.0


class Settings(BaseSettings):
    # An empty variable counts as unset; a bad value stops the service at start, naming the variable.
    # Other variables are the OpenTelemetry SDK's and BentoML's, also when given as arguments (the
    # ConfigMap's whole environment, as tools read it).
    model_config = SettingsConfigDict(
        frozen=True, env_ignore_empty=True, alias_generator=str.upper, validate_by_name=True, extra="ignore"
    )

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
