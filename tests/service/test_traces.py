"""Traces: each request's server span and `inference` span reach a real OTLP receiver over gRPC and HTTP."""

from __future__ import annotations

import secrets

import pytest
import requests

from newsgroups_classifier.local_config import shipped_service_env
from support.processes import poll_until
from support.service_process import start_server

INFERENCE_STEPS = ("preprocess", "vectorize", "predict", "postprocess")
TEXT = "My motorcycle needs a new chain and the dealer wants too much for it"


def traced_request(url: str, sampled: bool = True) -> tuple[str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-{'01' if sampled else '00'}"}
    response = requests.post(f"{url}/predict", json={"text": TEXT}, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return trace_id, parent_id


def whole_trace(receiver, trace_id: str, parent_id: str) -> list:
    """The trace's spans once the server span (child of the caller's) and `inference` are in: they can
    come in different exports, the server span ending last."""

    def complete() -> list:
        spans = receiver.trace(trace_id)
        has_server = any(span.parent_span_id == parent_id for span in spans)
        return spans if has_server and "inference" in {span.name for span in spans} else []

    return poll_until(complete, timeout=20, what=f"the server and inference spans of trace {trace_id}")


def assert_inference_trace(receiver, trace_id: str, parent_id: str, model_version: str) -> None:
    spans = whole_trace(receiver, trace_id, parent_id)
    server = next(span for span in spans if span.parent_span_id == parent_id)  # continues the caller's trace
    (inference,) = [span for span in spans if span.name == "inference"]
    assert len(spans) == 2, [span.name for span in spans]  # no per-message or per-step spans
    assert server.name == "POST /predict"
    assert inference.parent_span_id == server.span_id
    assert inference.scope == "newsgroups_classifier.prediction_telemetry"
    # Which step took how long: the steps follow each other inside `inference`, itself inside the
    # server span.
    steps = [inference.attributes[f"inference.{step}.duration_ms"] for step in INFERENCE_STEPS]
    assert all(ms >= 0 for ms in steps)
    assert sum(steps) == pytest.approx((inference.end_ns - inference.start_ns) / 1e6)
    assert server.start_ns <= inference.start_ns <= inference.end_ns <= server.end_ns
    assert inference.attributes["model.name"] == "newsgroups_classifier"
    assert inference.attributes["model.version"] == model_version
    assert inference.attributes["prediction.label"] == "rec.motorcycles"
    assert 0 < inference.attributes["prediction.confidence"] <= 1
    assert inference.attributes["input.length"] == len(TEXT)
    assert inference.resource["service.name"] == "newsgroups-classifier"
    assert inference.resource["service.version"] == model_version
    environment = shipped_service_env()["DEPLOYMENT_ENVIRONMENT"]
    assert inference.resource["deployment.environment.name"] == environment


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_spans_are_exported_with_parentage_and_attributes(transport, grpc_service, http_service, receiver):
    server = grpc_service if transport == "grpc" else http_service
    version = requests.post(f"{server.url}/predict", json={"text": TEXT}, timeout=10).json()["model_version"]
    trace_id, parent_id = traced_request(server.url)  # a sampled parent is always sampled
    assert_inference_trace(receiver, trace_id, parent_id, version)


def test_pod_and_namespace_become_resource_attributes(grpc_service, receiver):
    trace_id, _ = traced_request(grpc_service.url)
    spans = poll_until(lambda: receiver.trace(trace_id), timeout=20, what="the trace")
    assert spans[0].resource["k8s.pod.name"] == "classifier-0"
    assert spans[0].resource["k8s.namespace.name"] == "newsgroups"


def test_sampling_is_parent_based(http_service, receiver):
    # The HTTP service samples 1 in 1000: an unsampled parent stays unsampled, a sampled one is kept.
    unsampled, _ = traced_request(http_service.url, sampled=False)
    sampled, _ = traced_request(http_service.url, sampled=True)
    poll_until(lambda: receiver.trace(sampled), timeout=20, what="the sampled trace")
    assert receiver.trace(unsampled) == []


def test_each_request_of_an_adaptive_batch_keeps_its_own_trace(grpc_service, receiver):
    # Concurrent batch requests are merged into one model call; each still gets its own spans.
    from concurrent.futures import ThreadPoolExecutor

    def send(_: int) -> tuple[str, str]:
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
        response = requests.post(
            f"{grpc_service.url}/predict_batch", json={"texts": [TEXT, TEXT]}, headers=headers, timeout=20
        )
        assert response.status_code == 200, response.text
        return trace_id, parent_id

    # BentoML's dispatcher first calls the model one request at a time to learn its latency, and
    # refuses requests that wait longer than max_latency_ms meanwhile: train it before the burst.
    for _ in range(20):
        send(0)
    with ThreadPoolExecutor(8) as pool:
        sent = list(pool.map(send, range(16)))
    for trace_id, parent_id in sent:
        spans = whole_trace(receiver, trace_id, parent_id)
        server = next(span for span in spans if span.parent_span_id == parent_id)
        inference = next(span for span in spans if span.name == "inference")
        assert inference.parent_span_id == server.span_id
    batch_sizes = {s.attributes["batch.size"] for s in receiver.spans if s.name == "inference"}
    assert max(batch_sizes) > 2, "no two requests were ever batched together"


def test_spans_still_waiting_for_their_batch_are_exported_at_shutdown(models_home, receiver, tmp_path):
    # 20 requests make 40 spans: fewer than a batch (512), sent faster than the exporter's schedule
    # (5 s). Without the shutdown flush, they would die with the worker.
    server = start_server(models_home, tmp_path, receiver.grpc_endpoint, "grpc", 1.0)
    try:
        sent = [traced_request(server.url)[0] for _ in range(20)]
    finally:
        code = server.stop()
    assert code == 0, f"exit status {code}"
    lost = [t for t in sent if len(receiver.trace(t)) < 2]
    assert not lost, f"{len(lost)} of {len(sent)} traces lost at shutdown"
