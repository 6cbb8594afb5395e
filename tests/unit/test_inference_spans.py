"""The inference spans and the telemetry stages in this process, on an in-memory span exporter."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from opentelemetry import context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import REGISTRY

from newsgroups_classifier.config import Settings
from newsgroups_classifier.logs import TraceIdFilter
from newsgroups_classifier.prediction_telemetry import ModelCall, PredictionTelemetry
from newsgroups_classifier.tracing import PROPAGATOR, StepTimer, record_inference

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def exported():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter


def request(parent_span_id: str = "00f067aa0ba902b7", flags: str = "01") -> context.Context:
    return PROPAGATOR.extract({"traceparent": f"00-{TRACE_ID}-{parent_span_id}-{flags}"})


def test_one_span_below_the_request_says_how_long_each_step_took(exported):
    tracer, exporter = exported
    timer = StepTimer()
    for name in ("preprocess", "predict"):
        with timer.step(name):
            sum(range(10_000))
    record_inference(tracer, request(), timer, {"model.version": "v1"})
    (inference,) = exporter.get_finished_spans()
    assert inference.name == "inference"
    assert format(inference.context.trace_id, "032x") == TRACE_ID
    assert format(inference.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert inference.attributes["model.version"] == "v1"
    assert (inference.start_time, inference.end_time) == (timer.start_ns, timer.end_ns)
    steps = [inference.attributes[f"inference.{name}.duration_ms"] for name in ("preprocess", "predict")]
    assert all(ms > 0 for ms in steps)
    assert sum(steps) == pytest.approx((timer.end_ns - timer.start_ns) / 1e6)  # the steps follow each other
    assert inference.status.status_code == StatusCode.UNSET


def test_below_an_unsampled_parent_nothing_is_recorded(exported):
    tracer, exporter = exported
    timer = StepTimer()
    with timer.step("predict"):
        pass
    assert record_inference(tracer, request(flags="00"), timer, {}) is None
    assert exporter.get_finished_spans() == ()


def test_a_failed_step_gives_the_span_the_error_status_and_names_the_step(exported):
    tracer, exporter = exported
    timer = StepTimer()
    with timer.step("preprocess"):
        pass
    with pytest.raises(ValueError), timer.step("predict"):
        raise ValueError("the model broke")
    record_inference(tracer, request(), timer, {})
    (inference,) = exporter.get_finished_spans()
    assert inference.status.status_code == StatusCode.ERROR
    assert "the model broke" in inference.status.description
    assert inference.attributes["inference.failed_step"] == "predict"
    assert inference.events[0].name == "exception"


class Prediction:
    def __init__(self, label: str):
        self.label, self.confidence, self.prediction_id = label, 0.9, f"id-{label}"


class Item:
    def __init__(self, text: str, trace_context: context.Context):
        self.text, self.trace_context = text, trace_context


class BrokenMetrics:
    version = "v1"

    def observe_predictions(self, labels, signals):
        raise RuntimeError("metrics down")


def call(parent: context.Context | None = None) -> ModelCall:
    timer = StepTimer()
    with timer.step("predict"):
        pass
    parent = parent or request()
    return ModelCall(
        items=[Item("a goalie", parent), Item("an engine", parent)],
        tokens=[["goalie"], ["engine"]],
        known=np.array([1, 1]),
        probabilities=np.array([[0.9, 0.1], [0.2, 0.8]]),
        predictions=[Prediction("hockey"), Prediction("autos")],
        timer=timer,
    )


def errors(stage: str) -> float:
    return REGISTRY.get_sample_value("newsgroups_telemetry_errors_total", {"stage": stage}) or 0.0


def test_a_failing_stage_is_counted_and_the_others_still_record(exported, monkeypatch, caplog):
    tracer, exporter = exported
    telemetry = PredictionTelemetry(BrokenMetrics(), "model", Settings())
    monkeypatch.setattr(telemetry, "tracer", tracer)
    before = errors("metrics"), errors("spans")
    with caplog.at_level(logging.INFO):
        telemetry.predicted("predict_batch", call())  # must not raise
    assert (errors("metrics"), errors("spans")) == (before[0] + 1, before[1])
    assert [span.name for span in exporter.get_finished_spans()] == ["inference"]
    assert any("could not record a prediction's metrics" in r.getMessage() for r in caplog.records)


def test_the_texts_of_a_batch_are_grouped_by_the_request_they_came_in():
    from newsgroups_classifier.classifier import BatchText
    from newsgroups_classifier.prediction_telemetry import requests_of

    first = [BatchText.model_validate(text) for text in ("a", "b")]  # parsed in one request's context
    token = context.attach(request(parent_span_id="00000000000000aa"))
    try:
        second = [BatchText.model_validate("c")]
    finally:
        context.detach(token)
    grouped = requests_of([*first, *second])
    assert [request.indices for request in grouped] == [[0, 1], [2]]
    assert grouped[1].context is second[0].trace_context


class Metrics:
    version = "v1"

    def observe_predictions(self, labels, signals):
        pass

    def observe_model_call(self, endpoint, size, seconds):
        pass


def test_an_untraced_requests_events_carry_no_other_requests_trace_id(exported, monkeypatch, caplog):
    """The batch runs in a task whose context is the request's that started it (here a sampled one):
    the events of a later, unsampled request must not carry that request's trace id."""
    tracer, _ = exported
    telemetry = PredictionTelemetry(Metrics(), "model", Settings())
    monkeypatch.setattr(telemetry, "tracer", tracer)
    caplog.handler.addFilter(TraceIdFilter())
    token = context.attach(request(parent_span_id="00000000000000aa"))  # the task's own context
    try:
        with caplog.at_level(logging.INFO, logger="newsgroups_classifier.predictions"):
            telemetry.predicted("predict", call(request(flags="00")))
            telemetry.predicted("predict", call(request()))
    finally:
        context.detach(token)
    assert [getattr(made, "trace_id", None) for made in caplog.records] == [None, None, TRACE_ID, TRACE_ID]
