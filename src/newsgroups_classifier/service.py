"""The BentoML service: predictions with traces, trace-stamped prediction events, metrics and feedback."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from itertools import groupby
from pathlib import Path

import bentoml
import numpy as np
from bentoml._internal.configuration.containers import BentoMLContainer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel
from starlette.responses import JSONResponse

from .config import Settings
from .feedback import FeedbackError, PredictionIdSigner, SeenIds, signing_key
from .guard import RequestGuard
from .metrics import INFERENCE_BUCKETS, INFERENCE_HISTOGRAM, ServiceMetrics, count_rejection
from .model import tokenize
from .monitoring import Signals, signals
from .telemetry import (
    ExemplarStore,
    bucket_label,
    current_ids,
    export_resource_attributes,
    install_json_logging,
    skip_asgi_send_receive_spans,
    tracer,
)
from .training import BASELINE_FILE

settings = Settings()
PROPAGATOR = TraceContextTextMapPropagator()
logger = logging.getLogger("newsgroups_classifier.predictions")


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
        install_json_logging(home / "stdout.lock")
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
        self.exemplars = ExemplarStore(Path(BentoMLContainer.prometheus_multiproc_dir.get()))
        self.tracer = tracer()
        self.model_attributes = {"model.name": stored.tag.name, "model.version": self.version}

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
        """Run the model once over all items, then trace, log and count each request's share."""
        started, started_ns, steps = time.perf_counter(), time.time_ns(), []
        texts = [item.text for item in items]
        tokens = [tokenize(text) for text in texts]
        steps.append(("preprocess", started_ns, time.time_ns()))
        features = self.vectorizer.transform(tokens)
        steps.append(("vectorize", steps[-1][2], time.time_ns()))
        probabilities = self.classifier.predict_proba(features)
        steps.append(("predict", steps[-1][2], time.time_ns()))
        results: list[Prediction] = []
        for traceparent, group in groupby(range(len(items)), key=lambda i: items[i].traceparent):
            indices = list(group)
            parent = PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
            attributes = {
                **self.model_attributes,
                "batch.size": len(items),
                "input.length": sum(len(texts[i]) for i in indices),
            }
            with self.tracer.start_as_current_span(
                "inference", context=parent, start_time=started_ns, attributes=attributes
            ) as span:
                for name, start, end in steps:  # shared by every request of the batch
                    self.tracer.start_span(name, start_time=start).end(end_time=end)
                with self.tracer.start_as_current_span("postprocess"):
                    batch = [
                        self._finish(texts[i], tokens[i], probabilities[i], endpoint, started)
                        for i in indices
                    ]
                if len(batch) == 1:
                    span.set_attribute("prediction.label", batch[0].label)
                    span.set_attribute("prediction.confidence", batch[0].confidence)
                self._observe_latency(endpoint, time.perf_counter() - started)
            results += batch
        return results

    def _finish(
        self, text: str, tokens: list[str], row: np.ndarray, endpoint: str, started: float
    ) -> Prediction:
        best = int(np.argmax(row))
        label = self.classes[best]
        observed = signals(tokens, self.vectorizer.vocabulary_, row)
        self.metrics.observe_prediction(label, observed)
        prediction = Prediction(
            label=label,
            confidence=round(float(row[best]), 6),
            probabilities={c: round(float(p), 6) for c, p in zip(self.classes, row, strict=True)},
            model_version=self.version,
            prediction_id=self.signer.issue(self.version, label),
        )
        self._log_prediction(prediction, text, observed, endpoint, started)
        return prediction

    def _log_prediction(
        self, prediction: Prediction, text: str, observed: Signals, endpoint: str, started: float
    ) -> None:
        fields = {
            "endpoint": endpoint,
            "prediction_id": prediction.prediction_id,
            "model_version": prediction.model_version,
            "label": prediction.label,
            "confidence": prediction.confidence,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "input_chars": len(text),
            "input_tokens": observed.token_count,
            "oov_ratio": round(observed.oov_ratio, 4),
            "empty_input": observed.empty,
        }
        if settings.log_text == "hash":
            fields["text_sha256"] = hashlib.sha256(text.encode()).hexdigest()
        elif settings.log_text == "prefix":
            fields["text"] = text[: settings.log_text_chars]
        logger.info("prediction", extra={"fields": fields})

    def _observe_latency(self, endpoint: str, seconds: float) -> None:
        histogram = self.metrics.inference_seconds.labels(endpoint, self.version)
        histogram.observe(seconds)
        trace_id, _, sampled = current_ids()
        if sampled:  # an exemplar is only useful when its trace was exported
            self.exemplars.record(
                INFERENCE_HISTOGRAM,
                {"endpoint": endpoint, "model_version": self.version},
                bucket_label(seconds, INFERENCE_BUCKETS),
                seconds,
                trace_id,
            )


NewsgroupsClassifier.add_asgi_middleware(
    RequestGuard, max_body_bytes=settings.max_body_bytes, max_batch_size=settings.max_batch_size
)
