"""The classifier as the service runs it: the stored model, predictions with their telemetry, feedback.

The BentoML service (service.py) is the HTTP API around it.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
from logging.handlers import QueueListener
from pathlib import Path

import bentoml
import numpy as np
from opentelemetry import context
from pydantic import BaseModel, PrivateAttr, model_validator

from . import compat
from .config import SHUTDOWN_FLUSH_SECONDS, Settings
from .feedback import FeedbackError, PredictionIdSigner, SeenIds, signing_key
from .logs import run_within, stop_writing
from .metrics import TELEMETRY_ERRORS, ServiceMetrics
from .model import predict_proba, tokenize, vectorize
from .prediction_telemetry import ModelCall, PredictionTelemetry
from .tracing import StepTimer, flush_spans
from .training import BASELINE_FILE

FEEDBACK_LOGGER = "newsgroups_classifier.feedback"  # written before /feedback answers
feedback_log = logging.getLogger(FEEDBACK_LOGGER)


class BatchText(BaseModel):
    """One text as the API methods get it: clients send a plain string. It keeps the trace context of the
    request it came in (the request's server span is current while BentoML parses its body), since one
    adaptive batch mixes the texts of many requests and each belongs to its own trace; the API schema
    shows a string."""

    text: str
    _trace_context: context.Context = PrivateAttr(default_factory=context.get_current)

    @property
    def trace_context(self) -> context.Context:
        return self._trace_context

    @model_validator(mode="before")
    @classmethod
    def from_string(cls, value: object) -> object:
        return {"text": value} if isinstance(value, str) else value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler) -> dict:
        return {"type": "string", "minLength": 1}


class Prediction(BaseModel):
    label: str
    confidence: float
    probabilities: dict[str, float]
    model_version: str
    prediction_id: str


class FeedbackUnavailable(RuntimeError):
    """Feedback that could not be recorded now (stdout or the duplicate check unavailable)."""


def resolve_model(tag: str) -> bentoml.Model:
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as exc:
        raise RuntimeError(
            f"model {tag} is not in the BentoML model store ({compat.bentoml_home()}/models): "
            "train one with `make train`, fetch a published one (`python -m "
            "newsgroups_classifier.model_store fetch TAG`), or set MODEL_TAG"
        ) from exc


class Classifier:
    """Built once per worker, in the service's __init__ (after the worker has configured logging)."""

    def __init__(self, stored: bentoml.Model, settings: Settings):
        home = compat.bentoml_home()
        self.settings = settings
        self.version = stored.tag.version
        self.pipeline = bentoml.sklearn.load_model(stored)
        self.classes = [str(label) for label in self.pipeline.classes_]
        baseline = json.loads(Path(stored.path_of(BASELINE_FILE)).read_text())
        self.metrics = ServiceMetrics(stored.tag.name, self.version, self.classes, baseline)
        self.telemetry = PredictionTelemetry(self.metrics, stored.tag.name, settings)
        key = signing_key(settings.feedback_signing_key.get_secret_value(), home)
        self.signer = PredictionIdSigner(key, settings.feedback_max_age_seconds)
        self.seen = SeenIds(home / "feedback-seen.sqlite", settings.feedback_max_age_seconds)

    def predict(self, items: list[BatchText], endpoint: str) -> list[Prediction]:
        """Run the model once over all items, each step timed for the traces, then record."""
        timer = StepTimer()
        try:
            with timer.step("preprocess"):
                tokens = [tokenize(item.text) for item in items]
            with timer.step("vectorize"):
                features, known = vectorize(self.pipeline, tokens)
            with timer.step("predict"):
                probabilities = predict_proba(self.pipeline, features)
            with timer.step("postprocess"):
                predictions = [self._prediction(row) for row in probabilities]
        except Exception:
            if self.settings.telemetry_on:
                self.telemetry.failed(items, timer)
            raise
        if self.settings.telemetry_on:
            self.telemetry.predicted(
                endpoint, ModelCall(items, tokens, known, probabilities, predictions, timer)
            )
        return predictions

    def feedback(self, prediction_id: str, label: str) -> bool:
        """Record the true label of a prediction; whether the prediction was correct. Raises
        FeedbackError (the client's mistake) or FeedbackUnavailable (nothing was kept: retry)."""
        ref = self.signer.verify(prediction_id)
        if label not in self.classes:
            raise FeedbackError(
                "unknown_label", f"label {label!r} is not one of {', '.join(self.classes)}", 422
            )
        fields = {
            "prediction_id": prediction_id,
            "model_version": ref.model_version,
            "predicted_label": ref.label,
            "true_label": label,
            "correct": ref.label == label,
        }
        try:
            with self.seen.claim(ref):
                feedback_log.info("feedback", extra={"fields": fields})  # raises if not written
        except (OSError, sqlite3.OperationalError) as error:
            TELEMETRY_ERRORS.labels("feedback").inc()
            raise FeedbackUnavailable(
                f"feedback could not be recorded ({error}); nothing was kept"
            ) from error
        self.metrics.observe_feedback(ref.model_version, ref.label, label)
        return fields["correct"]

    def _prediction(self, row: np.ndarray) -> Prediction:
        best = int(np.argmax(row))
        label = self.classes[best]
        return Prediction(
            label=label,
            confidence=round(float(row[best]), 6),
            probabilities={c: round(float(p), 6) for c, p in zip(self.classes, row, strict=True)},
            model_version=self.version,
            prediction_id=self.signer.issue(self.version, label),
        )


def flush_telemetry(log_writer: QueueListener) -> None:
    """Write the queued log lines and export the pending spans (at shutdown: the worker then exits
    without running atexit hooks), for a bounded time."""
    run_within(SHUTDOWN_FLUSH_SECONDS, functools.partial(stop_writing, log_writer), flush_spans)
