"""The BentoML service: the classifier's HTTP API (predict, predict_batch, feedback)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

import bentoml
import numpy as np
from pydantic import BaseModel, model_validator
from starlette.responses import JSONResponse

from . import compat
from .config import SHUTDOWN_FLUSH_SECONDS, Settings
from .feedback import FeedbackError, PredictionIdSigner, SeenIds, signing_key
from .guard import RequestGuard
from .logs import install_json_logging
from .metrics import TELEMETRY_ERRORS, ServiceMetrics, count_rejection
from .model import predict_proba, tokenize, vectorize
from .prediction_telemetry import ERRORS_LOGGER, ModelCall, PredictionTelemetry
from .tracing import StepTimer, export_resource_attributes, flush_spans, use_bentoml_tracer_provider
from .training import BASELINE_FILE

FEEDBACK_LOGGER = "newsgroups_classifier.feedback"  # written before /feedback answers
settings = Settings()
feedback_log = logging.getLogger(FEEDBACK_LOGGER)


def resolve_model(tag: str) -> bentoml.Model:
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as exc:
        raise RuntimeError(
            f"model {tag} is not in the BentoML model store ({compat.bentoml_home()}/models): "
            "train one with `make train`, or set MODEL_TAG"
        ) from exc


STORED_MODEL = resolve_model(settings.model_tag)
export_resource_attributes(settings, STORED_MODEL.tag.version)


class BatchText(BaseModel):
    """One text of /predict_batch: clients send a plain string. The guard adds the request's
    traceparent, since one adaptive batch mixes the texts of many requests and each belongs to its own
    trace; the API schema shows a string."""

    text: str
    traceparent: str = ""

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


@bentoml.service(name="newsgroups-classifier", workers=settings.workers)  # traffic: the ConfigMap
class NewsgroupsClassifier:
    model_ref = bentoml.models.BentoModel(str(STORED_MODEL.tag))  # `bentoml build` packages this model

    def __init__(self) -> None:
        home = compat.bentoml_home()
        self.log_writer = install_json_logging(
            home / "stdout.lock", durable_loggers=[FEEDBACK_LOGGER], rate_limited=[ERRORS_LOGGER]
        )
        use_bentoml_tracer_provider()
        stored = self.model_ref  # resolved to the stored model inside the service
        self.version = stored.tag.version
        self.pipeline = bentoml.sklearn.load_model(stored)
        self.classes = [str(label) for label in self.pipeline.classes_]
        baseline = json.loads(Path(stored.path_of(BASELINE_FILE)).read_text())
        self.metrics = ServiceMetrics(stored.tag.name, self.version, self.classes, baseline)
        self.telemetry = PredictionTelemetry(self.metrics, stored.tag.name, settings)
        self.signer = PredictionIdSigner(
            signing_key(settings.feedback_signing_key, home), settings.feedback_max_age_seconds
        )
        self.seen = SeenIds(home / "feedback-seen.sqlite", settings.feedback_max_age_seconds)

    @bentoml.on_shutdown
    def flush_telemetry(self) -> None:
        """After the last request, write the queued log lines and export the pending spans (the worker
        then exits without running atexit hooks), for a bounded time: a blocked stdout or a hung
        collector must not hold the worker past its grace period."""
        flushes = [
            threading.Thread(target=flush, daemon=True) for flush in (self.log_writer.stop, flush_spans)
        ]
        for flush in flushes:
            flush.start()
        for flush in flushes:
            flush.join(SHUTDOWN_FLUSH_SECONDS)

    @bentoml.api(route="/predict")
    def predict(self, text: str) -> Prediction:
        return self._predict_many([BatchText(text=text)], "predict")[0]

    @bentoml.api(route="/predict_batch", batchable=True, max_batch_size=256, max_latency_ms=1000)
    def predict_batch(self, texts: list[BatchText]) -> list[Prediction]:
        return self._predict_many(texts, "predict_batch")

    @bentoml.api(route="/feedback")
    def feedback(self, prediction_id: str, label: str) -> dict:
        try:
            ref = self.signer.verify(prediction_id)
            if label not in self.classes:
                raise FeedbackError(
                    "unknown_label", f"label {label!r} is not one of {', '.join(self.classes)}", 422
                )
            with self.seen.claim(ref):
                fields = {
                    "prediction_id": prediction_id,
                    "model_version": ref.model_version,
                    "predicted_label": ref.label,
                    "true_label": label,
                    "correct": ref.label == label,
                }
                feedback_log.info("feedback", extra={"fields": fields})  # raises if not written
        except FeedbackError as error:
            count_rejection("feedback", error.reason)
            return JSONResponse({"error": str(error), "reason": error.reason}, status_code=error.status)
        except (OSError, sqlite3.OperationalError) as error:  # stdout or the duplicate check unavailable
            TELEMETRY_ERRORS.labels("feedback").inc()
            message = f"feedback could not be recorded ({error}); nothing was kept: retry later"
            return JSONResponse({"error": message, "reason": "unavailable"}, status_code=503)
        self.metrics.observe_feedback(ref.model_version, ref.label, label)
        return {"status": "recorded", "correct": ref.label == label}

    def _predict_many(self, items: list[BatchText], endpoint: str) -> list[Prediction]:
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
            if settings.telemetry:
                self.telemetry.failed(items, timer)
            raise
        if settings.telemetry:
            call = ModelCall(items, tokens, known, probabilities, predictions, timer)
            self.telemetry.predicted(endpoint, call)
        return predictions

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


NewsgroupsClassifier.add_asgi_middleware(
    RequestGuard, max_body_bytes=settings.max_body_bytes, max_batch_size=settings.max_batch_size
)
