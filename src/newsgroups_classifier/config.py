"""Service settings, read once from the environment (the Kubernetes ConfigMap and Secret set them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .model import MODEL_NAME

TEXT_LOGGING_MODES = ("none", "hash", "prefix")
# At shutdown, how long the worker may spend writing queued log lines and exporting pending spans
# (the Deployment's grace period is 30 s).
SHUTDOWN_FLUSH_SECONDS = 5.0


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _switch(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("on", "off"):
        raise ValueError(f"{name} must be on or off, got {raw!r}")
    return raw == "on"


@dataclass(frozen=True)
class Settings:
    model_tag: str = field(default_factory=lambda: os.environ.get("MODEL_TAG", f"{MODEL_NAME}:latest"))
    workers: int = field(default_factory=lambda: _int("WORKERS", 1))
    max_body_bytes: int = field(default_factory=lambda: _int("MAX_BODY_BYTES", 1024 * 1024))
    max_batch_size: int = field(default_factory=lambda: _int("MAX_BATCH_SIZE", 64))
    # Privacy: raw user text is never logged unless asked for.
    log_text: str = field(default_factory=lambda: os.environ.get("LOG_TEXT", "none"))
    log_text_chars: int = field(default_factory=lambda: _int("LOG_TEXT_CHARS", 200))
    feedback_signing_key: str = field(default_factory=lambda: os.environ.get("FEEDBACK_SIGNING_KEY", ""))
    feedback_max_age_seconds: int = field(
        default_factory=lambda: _int("FEEDBACK_MAX_AGE_SECONDS", 7 * 24 * 3600)
    )
    # Off: no prediction events, ML metrics or inference spans (BentoML's own telemetry has its own
    # switches). For measuring what telemetry costs, not for production.
    telemetry: bool = field(default_factory=lambda: _switch("TELEMETRY", True))
    environment: str = field(default_factory=lambda: os.environ.get("DEPLOYMENT_ENVIRONMENT", "local"))
    pod_name: str = field(default_factory=lambda: os.environ.get("POD_NAME", ""))
    pod_namespace: str = field(default_factory=lambda: os.environ.get("POD_NAMESPACE", ""))

    def __post_init__(self) -> None:
        if self.log_text not in TEXT_LOGGING_MODES:
            raise ValueError(
                f"LOG_TEXT must be one of {', '.join(TEXT_LOGGING_MODES)}, got {self.log_text!r}"
            )
        positive = ("max_body_bytes", "max_batch_size", "feedback_max_age_seconds", "workers")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.upper()} must be positive")
