"""The BentoML service: predictions with traces, trace-stamped prediction events, metrics and feedback."""

from __future__ import annotations

import json
import logging
import time
from itertools import groupby
from pathlib import Path

import bentoml
import numpy as np
from bentoml._internal.configuration.containers import BentoMLContainer
from pydantic import BaseModel
from starlette.responses import JSONResponse

from .config import Settings
from .events import LOGGER as EVENTS_LOGGER
from .events import PredictionEvent, PredictionEvents, RequestTelemetry, text_field
from .feedback import FeedbackError, PredictionIdSigner, SeenIds, signing_key
from .guard import RequestGuard
from .metrics import ServiceMetrics, count_rejection
from .model import tokenize, vectorize
from .patches import (
    cache_resource_hashes,
    note_request_metrics,
    skip_asgi_send_receive_spans,
    stream_access_log,
)
from .span_encoding import use_for_otlp_exporters
from .telemetry import (
    ExemplarStore,
    Step,
    export_resource_attributes,
    flush_spans,
    inference_trace,
    install_json_logging,
    request_context,
    tracer,
)
from .training import BASELINE_FILE

settings = Settings()
logger = logging.getLogger(EVENTS_LOGGER)


def resolve_model(tag: str) -> bentoml.Model:
    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound as exc:
        raise RuntimeError(
            f"model {tag} is not in the BentoML model store ({BentoMLContainer.bentoml_home.get()}/models): "
            "train one with `make train`, or set MODEL_TAG"
        ) from exc


STORED_MODEL = resolve_model(settings.model_tag)
export_resource_attributes(settings, STORED_MODEL.tag.version)
skip_asgi_send_receive_spans()
stream_access_log()
note_request_metrics()
cache_resource_hashes()
use_for_otlp_exporters()


class BatchItem(BaseModel):
    text: str
    traceparent: str = ""


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
        home = Path(BentoMLContainer.bentoml_home.get())
        self.stdout = install_json_logging(
            home / "stdout.lock", settings.telemetry_flush_seconds, settings.telemetry_flush_lines
        )
        stored = self.model_ref  # resolved to the stored model inside the service
        self.version = stored.tag.version
        self.pipeline = bentoml.sklearn.load_model(stored)
        self.vectorizer = self.pipeline.named_steps["tfidf"]
        self.classifier = self.pipeline.named_steps["classifier"]
        self.classes = [str(label) for label in self.pipeline.classes_]
        baseline = json.loads(Path(stored.path_of(BASELINE_FILE)).read_text())
        self.metrics = ServiceMetrics(stored.tag.name, self.version, self.classes, baseline)
        self.signer = PredictionIdSigner(
            signing_key(settings.feedback_signing_key, home), settings.feedback_max_age_seconds
        )
        self.seen = SeenIds(home / "feedback-seen.sqlite", settings.feedback_max_age_seconds)
        self.tracer = tracer()
        exemplars = ExemplarStore(
            Path(BentoMLContainer.prometheus_multiproc_dir.get()), settings.telemetry_flush_seconds
        )
        self.events = PredictionEvents(self.metrics, self.stdout, self.tracer, exemplars)
        self.model_attributes = {"model.name": stored.tag.name, "model.version": self.version}

    @bentoml.on_shutdown
    def flush_telemetry(self) -> None:
        """After the last request: write the pending log lines (the rest unbuffered) and export the
        pending spans, since the worker then exits without running atexit hooks."""
        self.stdout.stop_buffering()
        flush_spans(self.tracer)

    @bentoml.api(route="/predict")
    def predict(self, text: str) -> Prediction:
        return self._predict_many([BatchItem(text=text)], "predict")[0]

    @bentoml.api(route="/predict_batch", batchable=True, max_batch_size=256, max_latency_ms=1000)
    def predict_batch(self, items: list[BatchItem]) -> list[Prediction]:
        # Clients send {"texts": [...]}; the guard turns each text into an item with its request's
        # traceparent, since one adaptive batch mixes the texts of many requests.
        return self._predict_many(items, "predict_batch")

    @bentoml.api(route="/feedback")
    def feedback(self, prediction_id: str, label: str) -> dict:
        try:
            ref = self.signer.verify(prediction_id)
            if label not in self.classes:
                raise FeedbackError(
                    "unknown_label", f"label {label!r} is not one of {', '.join(self.classes)}", 422
                )
            self.seen.claim(ref)
        except FeedbackError as error:
            count_rejection("feedback", error.reason)
            return JSONResponse({"error": str(error), "reason": error.reason}, status_code=error.status)
        self.metrics.observe_feedback(ref.model_version, ref.label, label)
        logger.info(
            "feedback",
            extra={
                "fields": {
                    "prediction_id": prediction_id,
                    "model_version": ref.model_version,
                    "predicted_label": ref.label,
                    "true_label": label,
                    "correct": ref.label == label,
                }
            },
        )
        return {"status": "recorded", "correct": ref.label == label}

    def _predict_many(self, items: list[BatchItem], endpoint: str) -> list[Prediction]:
        """Run the model once over all items (their steps timed for the traces), then record."""
        started, started_ns, steps = time.perf_counter(), time.time_ns(), []
        texts = [item.text for item in items]
        tokens = [tokenize(text) for text in texts]
        steps.append(("preprocess", started_ns, time.time_ns()))
        features, known = vectorize(self.vectorizer, tokens)
        steps.append(("vectorize", steps[-1][2], time.time_ns()))
        probabilities = self.classifier.predict_proba(features)
        steps.append(("predict", steps[-1][2], time.time_ns()))
        predictions = [self._prediction(row) for row in probabilities]
        steps.append(("postprocess", steps[-1][2], time.time_ns()))
        if settings.telemetry:
            self._record(endpoint, items, tokens, known, probabilities, predictions, steps, started)
        return predictions

    def _record(
        self,
        endpoint: str,
        items: list[BatchItem],
        tokens: list[list[str]],
        known: np.ndarray,
        probabilities: np.ndarray,
        predictions: list[Prediction],
        steps: list[Step],
        started: float,
    ) -> None:
        """For each request of the batch: its prediction events, which carry its latency and spans."""
        latency, ended_ns = time.perf_counter() - started, time.time_ns()
        latency_ms = round(latency * 1000, 3)
        for traceparent, group in groupby(range(len(items)), key=lambda i: items[i].traceparent):
            indices = list(group)
            context, spans = request_context(traceparent), None
            if context.trace_flags.sampled:  # parent-based sampling: below an unsampled parent, no spans
                attributes = {
                    **self.model_attributes,
                    "batch.size": len(items),
                    "input.length": sum(len(items[i].text) for i in indices),
                }
                if len(indices) == 1:
                    attributes["prediction.label"] = predictions[indices[0]].label
                    attributes["prediction.confidence"] = predictions[indices[0]].confidence
                spans = inference_trace(self.tracer, context, steps[0][1], ended_ns, attributes, steps)
                context = spans.inference
            request = RequestTelemetry(latency, spans)
            for i in indices:
                self.events.record(
                    PredictionEvent(
                        created=time.time(),
                        endpoint=endpoint,
                        prediction_id=predictions[i].prediction_id,
                        label=predictions[i].label,
                        confidence=predictions[i].confidence,
                        latency_ms=latency_ms,
                        input_chars=len(items[i].text),
                        token_count=len(tokens[i]),
                        known_tokens=int(known[i]),
                        probabilities=probabilities[i],
                        trace_id=context.trace_id,
                        span_id=context.span_id,
                        text_field=text_field(items[i].text, settings),
                        request=request if i == indices[0] else None,
                    )
                )

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
