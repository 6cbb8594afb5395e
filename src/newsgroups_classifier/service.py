"""The BentoML service: the classifier's HTTP API."""

from __future__ import annotations

from typing import Annotated

import bentoml
from bentoml.validators import ContentType
from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema
from starlette.responses import JSONResponse

from . import compat, metrics
from .api_schema import TEXT
from .classifier import (
    FEEDBACK_LOGGER,
    BatchText,
    Classifier,
    FeedbackUnavailable,
    Prediction,
    flush_telemetry,
    resolve_model,
)
from .config import Settings
from .feedback import FeedbackError
from .http_edge import HttpEdge
from .logs import take_over_process_output
from .prediction_telemetry import ERRORS_LOGGER
from .tracing import configure_tracing

SERVICE_NAME = "newsgroups-classifier"
JSON = "application/json"
# First, in `bentoml serve` and in each worker (both import this module before logging anything):
# every line printed from here on is JSON, and only the log writer's thread ever waits on stdout.
# uvicorn logs a warning for each request its HTTP parser refuses: at most one a minute.
log_writer = take_over_process_output(
    compat.bentoml_home() / "stdout.lock",
    durable_loggers=[FEEDBACK_LOGGER],
    rate_limited=[ERRORS_LOGGER, "uvicorn.error"],
)
settings = Settings()

# /predict takes one text and answers one prediction, and is batchable all the same: BentoML's adaptive
# batching merges concurrent requests into one model call (a third of the CPU per request:
# docs/benchmarks.md). These annotations make the one text a batch of one, and the batch of one the
# answer; the API schema shows a text and a prediction.
OneText = Annotated[list[BatchText], BeforeValidator(lambda item: [item]), WithJsonSchema(TEXT)]
OnePrediction = Annotated[
    list[Prediction],
    PlainSerializer(lambda predictions: predictions[0].model_dump(), return_type=dict),
    WithJsonSchema(Prediction.model_json_schema()),
    ContentType(JSON),  # said once: else BentoML derives it from the JSON schema per response
]
Predictions = Annotated[list[Prediction], ContentType(JSON)]
# Sync methods, in BentoML's thread: the event loop gathers the next batch while one is predicted.
BATCHING = {
    "batchable": settings.adaptive_batching == "on",
    "max_batch_size": 256,  # requests merged into one model call
    "max_latency_ms": settings.adaptive_batch_max_latency_ms,
}


# The model is not part of the service (no `bentoml.models.BentoModel`, so `bentoml build` packages none and
# the image holds none): each worker loads MODEL_TAG from the BentoML model store, where `make train` saves
# it, and where in the cluster the pod's init container fetched it from the model store (model_store.py).
@bentoml.service(name=SERVICE_NAME, workers=settings.workers)  # traffic: the ConfigMap
class NewsgroupsClassifier:
    @bentoml.on_deployment
    def check_model() -> None:
        """Once, in `bentoml serve` before any worker starts: without its model the server stops with a
        clear error (a worker that failed would be started again, forever)."""
        resolve_model(settings.model_tag)

    def __init__(self) -> None:
        metrics.register_worker()
        stored = resolve_model(settings.model_tag)
        if settings.telemetry_on:
            configure_tracing(settings, SERVICE_NAME, stored.tag.version)
        self.classifier = Classifier(stored, settings)

    @bentoml.on_shutdown
    def flush_telemetry(self) -> None:
        flush_telemetry(log_writer)

    @bentoml.api(route="/predict", **BATCHING)
    def predict(self, text: OneText) -> OnePrediction:
        return self.classifier.predict(text, "predict")

    @bentoml.api(route="/predict_batch", **BATCHING)
    def predict_batch(self, texts: list[BatchText]) -> Predictions:
        return self.classifier.predict(texts, "predict_batch")

    @bentoml.api(route="/feedback")  # sync: SQLite and a stdout write that may wait, off the event loop
    def feedback(self, prediction_id: str, label: str) -> dict:
        try:
            correct = self.classifier.feedback(prediction_id, label)
        except FeedbackError as error:
            metrics.count_rejection("feedback", error.reason)
            return JSONResponse({"error": str(error), "reason": error.reason}, status_code=error.status)
        except FeedbackUnavailable as error:
            return JSONResponse({"error": f"{error}: retry later", "reason": "unavailable"}, status_code=503)
        return {"status": "recorded", "correct": correct}


# Every request, inside BentoML's own middlewares: its route, its input checks, its metrics, event and
# server span, and a JSON answer whatever happens (the schema it publishes names the model's labels).
NewsgroupsClassifier.add_asgi_middleware(
    HttpEdge, settings=settings, labels=lambda: resolve_model(settings.model_tag).info.metadata["labels"]
)
