"""Which requests get a server span: the API's, made by the HTTP edge; BentoML's own are off.

A span is named after its request's route and the collector makes a metric series of each span name:
the traced names must be a fixed set, whatever paths clients send.
"""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.util.http import ExcludeList

from newsgroups_classifier.config import Settings
from newsgroups_classifier.http_edge import HttpEdge
from newsgroups_classifier.local_config import shipped_bentoml_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
API = ["/predict", "/predict_batch", "/feedback"]
OTHER_PATHS = ["/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/", "/predict/", "/x"]


class TracedEdge(HttpEdge):
    """The edge with a tracer of this test's."""

    exporter = InMemorySpanExporter()

    def __init__(self, app, settings):
        super().__init__(app, settings, labels=lambda: ["rec.autos", "rec.sport.hockey"])
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = provider.get_tracer("test")


async def answered(scope: dict, body: bytes) -> None:
    async def app(scope, receive, send):  # BentoML's routes, answering 200
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        pass

    await TracedEdge(app, Settings(telemetry="on"))(scope, receive, send)


def request(method: str, path: str, content_type: bytes = b"application/json") -> dict:
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()
    headers = [(b"content-type", content_type), (b"traceparent", traceparent)]
    return {"type": "http", "method": method, "path": path, "headers": headers}


@pytest.fixture(autouse=True)
def no_spans_yet(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # where /metrics reads, in a worker
    TracedEdge.exporter.clear()


def spans() -> list:
    return list(TracedEdge.exporter.get_finished_spans())


def test_a_request_to_the_api_gets_one_server_span_named_after_its_route():
    asyncio.run(answered(request("POST", "/predict", b"text/plain"), b"the goalie"))
    (span,) = spans()
    assert span.name == "POST /predict" and span.attributes["http.route"] == "/predict"
    assert format(span.context.trace_id, "032x") == TRACE_ID  # the caller's trace, continued
    assert span.attributes["http.response.status_code"] == 200
    assert span.status.status_code == StatusCode.UNSET


def test_a_rejected_api_request_is_traced_with_its_status():
    asyncio.run(answered(request("POST", "/predict_batch"), b'{"texts": []}'))
    (span,) = spans()
    assert (span.name, span.attributes["http.response.status_code"]) == ("POST /predict_batch", 422)


@pytest.mark.parametrize("path", OTHER_PATHS)
@pytest.mark.parametrize("method", ["GET", "POST", "BREW"])
def test_nothing_else_is_traced(method, path):
    asyncio.run(answered(request(method, path), b"{}"))
    assert spans() == []


@pytest.mark.parametrize("path", API)
def test_other_methods_on_the_api_are_not_traced(path):
    asyncio.run(answered(request("GET", path), b""))
    assert spans() == []


@pytest.mark.parametrize("path", [*API, *OTHER_PATHS])
def test_bentoml_makes_no_server_span(path):
    excluded = shipped_bentoml_config()["services"]["tracing"]["excluded_urls"]
    assert ExcludeList(excluded).url_disabled(f"http://127.0.0.1:3000{path}")
