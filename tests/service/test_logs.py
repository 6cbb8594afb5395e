"""Logs: one JSON prediction event per prediction, stamped with the trace id, with the text kept private."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from support.dashboards import TRACE_ID_IN_LINE
from support.processes import poll_until
from support.service_process import start_server

TEXT = "The new engine in my car makes a strange noise when I brake"


def events(server, trace_id: str) -> list[dict]:
    lines = [json.loads(line) for line in server.log_lines() if line.startswith("{") and trace_id in line]
    return lines


def predict_traced(server) -> tuple[str, dict]:
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    response = requests.post(f"{server.url}/predict", json={"text": TEXT}, headers=headers, timeout=10)
    assert response.status_code == 200
    return trace_id, response.json()


def prediction_event(server, trace_id: str) -> dict:
    return poll_until(
        lambda: next((e for e in events(server, trace_id) if e.get("event") == "prediction"), None),
        timeout=10,
        what="the prediction event",
    )


def test_prediction_event_has_every_field_and_the_callers_trace_id(grpc_service):
    trace_id, prediction = predict_traced(grpc_service)
    event = prediction_event(grpc_service, trace_id)
    assert event["trace_id"] == trace_id and re.fullmatch(r"[0-9a-f]{16}", event["span_id"])
    assert event["level"] == "info" and event["ts"].endswith("+00:00")
    for field in ("label", "confidence", "model_version", "prediction_id"):
        assert event[field] == prediction[field], field
    assert event["input_chars"] == len(TEXT) and event["input_tokens"] > 0 and event["latency_ms"] > 0


def lines_of(server, trace_id: str) -> list[dict]:
    return [json.loads(line) for line in server.log_lines() if trace_id in line]


def test_a_prediction_leaves_one_line_and_a_rejection_one_line_with_its_trace_id(grpc_service):
    trace_id, _ = predict_traced(grpc_service)
    rejected = secrets.token_hex(16)
    headers = {"traceparent": f"00-{rejected}-{secrets.token_hex(8)}-01"}
    response = requests.post(f"{grpc_service.url}/predict", data=b"  ", headers=headers, timeout=10)
    assert response.status_code == 400
    # The rejection's line is written after the prediction's: once it is there, both are.
    (request,) = poll_until(lambda: lines_of(grpc_service, rejected), timeout=10, what="the rejection's line")
    (prediction,) = lines_of(grpc_service, trace_id)  # no access log line beside the event
    assert prediction["event"] == "prediction"
    assert (request["event"], request["route"], request["status"]) == ("request", "/predict", 400)
    assert request["reason"] == "empty_text" and request["trace_id"] == rejected
    # Every line about a request, whatever request it was, has its trace id in the same form.
    request_lines = [line for line in grpc_service.log_lines() if '"event":"' in line]
    assert all(TRACE_ID_IN_LINE.search(line) for line in request_lines)


def test_default_privacy_setting_logs_no_text(service):
    trace_id, _ = predict_traced(service)
    event = prediction_event(service, trace_id)
    assert "text" not in event and "text_sha256" not in event
    assert not any("strange noise" in line for line in service.log_lines())


def test_hash_setting_logs_the_sha256(grpc_service):
    event = prediction_event(grpc_service, predict_traced(grpc_service)[0])
    assert event["text_sha256"] == hashlib.sha256(TEXT.encode()).hexdigest() and "text" not in event


def test_prefix_setting_logs_the_first_characters(http_service):
    event = prediction_event(http_service, predict_traced(http_service)[0])
    assert event["text"] == TEXT[:12]


@pytest.fixture(scope="module")
def verbose_service(models_home, tmp_path_factory):
    """Two workers logging whole texts to a pipe, as in a container: lines longer than its atomic write."""
    workdir = tmp_path_factory.mktemp("verbose")
    server = start_server(
        models_home,
        workdir,
        sample_rate=0.0,
        env={"WORKERS": "2", "LOG_TEXT": "prefix", "LOG_TEXT_CHARS": "100000"},
        cri_log=workdir / "container.log",  # stdout is a pipe, read line by line
    )
    yield server
    server.stop()


def test_no_line_is_lost_or_interleaved_across_workers(verbose_service):
    # Two workers, concurrent clients, 40 kB lines: every line must parse, none may be missing.
    service = verbose_service
    texts = [f"engine {i} " + "carburetor " * 4000 for i in range(4)]

    def send(_: int) -> list[str]:
        response = requests.post(f"{service.url}/predict_batch", json={"texts": texts}, timeout=30)
        assert response.status_code == 200, response.text
        return [prediction["prediction_id"] for prediction in response.json()]

    with ThreadPoolExecutor(8) as pool:
        wanted = {prediction_id for ids in pool.map(send, range(40)) for prediction_id in ids}

    def all_logged() -> bool:
        logged = [json.loads(line) for line in service.log_lines() if line.startswith("{")]
        intact = {
            e["prediction_id"]
            for e in logged
            if e.get("event") == "prediction" and e["text"] == texts[int(e["text"].split()[1])]
        }
        return wanted <= intact  # each prediction's event, whole, though batches mixed requests

    poll_until(all_logged, timeout=20, what="every prediction event of the batches")
