"""What each prediction leaves behind, recorded before its response is sent: the request's `inference`
span with a span per step, the prediction metrics, and one `prediction` event per prediction.

Telemetry never fails a prediction: an exception in a stage is caught, counted in
`newsgroups_telemetry_errors_total{stage}` and logged (once a minute).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Protocol, TypeVar

import numpy as np
from opentelemetry import context, trace

from .config import Settings
from .drift_signals import Signals, signals
from .metrics import TELEMETRY_ERRORS, ServiceMetrics
from .tracing import StepTimer, record_inference, sampled

EVENTS_LOGGER = "newsgroups_classifier.predictions"
ERRORS_LOGGER = "newsgroups_classifier.telemetry"
events = logging.getLogger(EVENTS_LOGGER)
errors = logging.getLogger(ERRORS_LOGGER)
T = TypeVar("T")


class Item(Protocol):
    text: str
    trace_context: context.Context  # of the request the text came in


class Predicted(Protocol):
    label: str
    confidence: float
    prediction_id: str


@dataclass(frozen=True)
class ModelCall:
    """One run of the model over the texts of one or more requests, and what it gave."""

    items: Sequence[Item]
    tokens: list[list[str]]
    known: np.ndarray  # per text, how many of its tokens the vocabulary knows
    probabilities: np.ndarray
    predictions: Sequence[Predicted]
    timer: StepTimer


@dataclass(frozen=True)
class Request:
    """The texts of one HTTP request within a model call (an adaptive batch mixes requests)."""

    context: context.Context
    indices: list[int]


def requests_of(items: Sequence[Item]) -> list[Request]:
    """Consecutive items with the same trace context came from one request (a batch keeps their order)."""
    return [
        Request(items[indices[0]].trace_context, indices)
        for _, group in groupby(range(len(items)), key=lambda i: id(items[i].trace_context))
        if (indices := list(group))
    ]


def text_field(text: str, settings: Settings) -> dict[str, str]:
    """The input text as the privacy setting allows it in the log: none (default), a hash, or a prefix."""
    if settings.log_text == "hash":
        return {"text_sha256": hashlib.sha256(text.encode()).hexdigest()}
    if settings.log_text == "prefix":
        return {"text": text[: settings.log_text_chars]}
    return {}


class PredictionTelemetry:
    def __init__(self, metrics: ServiceMetrics, model_name: str, settings: Settings):
        self.tracer = trace.get_tracer(__name__)
        self.metrics = metrics
        self.settings = settings
        self.model_attributes = {"model.name": model_name, "model.version": metrics.version}

    def predicted(self, endpoint: str, call: ModelCall) -> None:
        observed = self._guarded("metrics", self._observe, endpoint, call)
        for request in requests_of(call.items):
            span = self._guarded("spans", self._spans, call, request) if sampled(request.context) else None
            self._guarded("events", self._log_events, endpoint, call, request, span, observed)

    def failed(self, items: Sequence[Item], timer: StepTimer) -> None:
        """A model call that raised: each request's spans, with the error status."""
        for request in requests_of(items):
            self._guarded(
                "spans", record_inference, self.tracer, request.context, timer, self.model_attributes
            )

    def _spans(self, call: ModelCall, request: Request) -> trace.Span | None:
        attributes = {
            **self.model_attributes,
            "batch.size": len(call.items),
            "input.length": sum(len(call.items[i].text) for i in request.indices),
        }
        if len(request.indices) == 1:
            prediction = call.predictions[request.indices[0]]
            attributes["prediction.label"] = prediction.label
            attributes["prediction.confidence"] = prediction.confidence
        return record_inference(self.tracer, request.context, call.timer, attributes)

    def _observe(self, endpoint: str, call: ModelCall) -> Signals:
        observed = signals([len(tokens) for tokens in call.tokens], call.known, call.probabilities)
        self.metrics.observe_predictions([p.label for p in call.predictions], observed)
        self.metrics.observe_model_call(endpoint, len(call.items), call.timer.seconds)
        return observed

    def _log_events(
        self, endpoint: str, call: ModelCall, request: Request, span: trace.Span | None, observed: Signals
    ) -> None:
        """One `prediction` event per prediction of `request`, logged in its `inference` span if it was
        traced. An untraced request's context is attached all the same: the batch runs in a task whose
        own context is the request's that started it."""
        token = context.attach(trace.set_span_in_context(span, request.context) if span else request.context)
        try:
            for i in request.indices:
                prediction, text = call.predictions[i], call.items[i].text
                fields = {
                    "endpoint": endpoint,
                    "prediction_id": prediction.prediction_id,
                    "model_version": self.metrics.version,
                    "label": prediction.label,
                    "confidence": prediction.confidence,
                    "latency_ms": round(call.timer.seconds * 1000, 3),
                    "input_chars": len(text),
                    "input_tokens": int(observed.token_count[i]),
                    "oov_ratio": round(float(observed.oov_ratio[i]), 4),
                    "empty_input": bool(observed.empty[i]),
                    **text_field(text, self.settings),
                }
                events.info("prediction", extra={"fields": fields})
        finally:
            context.detach(token)

    def _guarded(self, stage: str, record: Callable[..., T], *args) -> T | None:
        try:
            return record(*args)
        except Exception:
            TELEMETRY_ERRORS.labels(stage).inc()
            errors.exception("could not record a prediction's %s", stage)
            return None
