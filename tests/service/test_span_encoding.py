"""The span encoder writes exactly the message of OpenTelemetry's own OTLP encoder, for every kind of span."""

from __future__ import annotations

import math

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TraceFlags, TraceState

from newsgroups_classifier import span_encoding
from newsgroups_classifier.telemetry import inference_trace, record_inference

SCALARS = {
    "text": "POST /predict",
    "empty": "",
    "unicode": "r\u00e9sum\u00e9 \u2603",
    "long": "x" * 300,  # lengths over 127 take two varint bytes
    "true": True,
    "false": False,
    "zero": 0,
    "port": 40_123,
    "negative": -7,
    "int64 max": 2**63 - 1,
    "int64 min": -(2**63),
    "too big for int64": 2**64,  # the stock encoder logs it and leaves it out
    "float": 0.731,
    "nan": math.nan,
    "inf": -math.inf,
    "bytes": b"\x00\xff",
    "strings": ("a", "b"),
    "numbers": [1, 2.5],
    "flags": [True, False],
    "empty list": [],
}


def finished_spans(limits: SpanLimits | None = None) -> list:
    exporter = InMemorySpanExporter()
    resource = Resource.create({"service.name": "newsgroups-classifier", "k8s.pod.name": "pod-1"})
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    other = TracerProvider(resource=Resource({"service.name": "other"}, schema_url="https://x/1.0"))
    other.add_span_processor(SimpleSpanProcessor(exporter))
    asgi = provider.get_tracer("opentelemetry.instrumentation.asgi", "0.66b1")
    scoped = provider.get_tracer("scoped", "1.2", schema_url="https://x/1.1", attributes={"team": "ml"})
    remote = trace.SpanContext(
        0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "v1")])
    )
    with asgi.start_as_current_span("POST /predict", kind=SpanKind.SERVER, attributes=SCALARS) as server:
        server.add_event("received", {"bytes": 120, "ok": True}, timestamp=1_700_000_000_000_000_000)
        server.add_event("bare")
        server.set_status(Status(StatusCode.ERROR, "model failed"))
        spans = inference_trace(
            asgi,
            server.get_span_context(),
            1_700_000_000_000_000_000,
            1_700_000_000_002_000_000,
            {"model.version": "abc", "prediction.confidence": 0.93},
            [("preprocess", 1_700_000_000_000_000_000, 1_700_000_000_001_000_000)],
        )
        record_inference(asgi, spans)
    with scoped.start_as_current_span(
        "child of remote",
        context=trace.set_span_in_context(trace.NonRecordingSpan(remote)),
        kind=SpanKind.CONSUMER,
        links=[Link(remote, {"link.kind": "follows"})],
    ) as span:
        span.set_status(Status(StatusCode.OK))
    for kind in SpanKind:
        other.get_tracer("other").start_span(f"kind {kind.name}", kind=kind).end()
    for signed_zero in (0.0, -0.0):  # equal as numbers, different bytes
        asgi.start_span(f"zero {signed_zero}", attributes={"signed": signed_zero}).end()
    for i in range(200):  # more than 127 spans in a scope: multi-byte lengths
        asgi.start_span(f"span {i}", attributes={"i": i}).end()
    return list(exporter.get_finished_spans())


def assert_same_message(spans: list) -> None:
    stock = stock_encode_spans(spans).SerializeToString(deterministic=True)
    ours = span_encoding.encode_spans(spans).SerializeToString(deterministic=True)
    assert ours == stock


def test_every_kind_of_span_and_value_encodes_as_the_stock_encoder_does():
    spans = finished_spans()
    assert len({span.resource for span in spans}) == 2 and any(span.links for span in spans)
    assert_same_message(spans)
    assert_same_message(spans)  # again, from the caches


def test_dropped_attributes_events_and_links_are_counted_as_the_stock_encoder_does():
    limits = SpanLimits(max_span_attributes=3, max_events=1, max_links=0, max_event_attributes=1)
    spans = finished_spans(limits)
    assert any(span.dropped_attributes and span.dropped_events for span in spans)
    assert_same_message(spans)


def test_attribute_caches_stay_bounded(monkeypatch):
    monkeypatch.setattr(span_encoding, "_CACHE_LIMIT", 50)
    monkeypatch.setattr(span_encoding, "_attribute_cache", {})
    spans = finished_spans()
    assert_same_message(spans)
    assert len(span_encoding._attribute_cache) <= 50


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_otlp_exporters_encode_with_it(protocol):
    from importlib import import_module

    module = import_module(f"opentelemetry.exporter.otlp.proto.{protocol}.trace_exporter")
    span_encoding.use_for_otlp_exporters()
    assert module.encode_spans is span_encoding.encode_spans
