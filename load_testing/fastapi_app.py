"""The alternatives in the benchmark: the same model behind a FastAPI app on uvicorn, as a user would
write it instead of our service, plain or (`PEER_TELEMETRY=on`) with the same telemetry added the
usual way: OpenTelemetry's FastAPI instrumentation with an `inference` span and one span per step,
OTLP over gRPC to `OTLP_ENDPOINT` at `SAMPLE_RATE` (parent-based), a Prometheus histogram per request
on /metrics, and one JSON log line per prediction (python-json-logger) on stdout.

    MODEL_PATH=... uvicorn fastapi_app:app --app-dir load_testing --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import nullcontext

import joblib
from fastapi import FastAPI
from pydantic import BaseModel

from newsgroups_classifier.model import predict_proba, tokenize, vectorize

pipeline = joblib.load(os.environ["MODEL_PATH"])
classes = [str(label) for label in pipeline.classes_]
TELEMETRY = os.environ.get("PEER_TELEMETRY", "off") == "on"
app = FastAPI()


class Query(BaseModel):
    text: str


class Prediction(BaseModel):
    label: str
    confidence: float
    probabilities: dict[str, float]


if TELEMETRY:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from prometheus_client import Histogram, make_asgi_app
    from pythonjsonlogger.json import JsonFormatter

    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(float(os.environ["SAMPLE_RATE"]))),
        resource=Resource.create({"service.name": "fastapi-peer"}),  # and OTEL_RESOURCE_ATTRIBUTES
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(os.environ["OTLP_ENDPOINT"], insecure=True))
    )
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,metrics")
    tracer = trace.get_tracer(__name__)
    latency = Histogram("request_duration_seconds", "Time in the prediction handler", ["path"])
    app.mount("/metrics", make_asgi_app())
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{"))
    events = logging.getLogger("predictions")
    events.addHandler(handler)
    events.setLevel(logging.INFO)


def span(name: str):
    return tracer.start_as_current_span(name) if TELEMETRY else nullcontext()


@app.post("/predict")
def predict(query: Query) -> Prediction:  # sync: FastAPI runs it in its thread pool, as BentoML does
    started = time.perf_counter()
    with span("inference"):
        with span("preprocess"):
            tokens = [tokenize(query.text)]
        with span("vectorize"):
            features, _ = vectorize(pipeline, tokens)
        with span("predict"):
            row = predict_proba(pipeline, features)[0]
        with span("postprocess"):
            best = int(row.argmax())
            prediction = Prediction(
                label=classes[best],
                confidence=float(row[best]),
                probabilities={label: float(p) for label, p in zip(classes, row, strict=True)},
            )
        if TELEMETRY:
            context = trace.get_current_span().get_span_context()
            events.info(
                "prediction",
                extra={
                    "trace_id": format(context.trace_id, "032x"),
                    "span_id": format(context.span_id, "016x"),
                    "label": prediction.label,
                    "confidence": prediction.confidence,
                    "input_chars": len(query.text),
                },
            )
    if TELEMETRY:
        latency.labels("/predict").observe(time.perf_counter() - started)
    return prediction


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}
