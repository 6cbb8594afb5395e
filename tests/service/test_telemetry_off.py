"""TELEMETRY=off, the benchmark's baseline: predictions unchanged, none of the service's own telemetry."""

from __future__ import annotations

import json
import secrets

import requests

from support.service_process import scrape, start_server, value

TEXT = "The pitcher threw a fastball and the batter hit a home run"


def test_telemetry_off_keeps_predictions_and_drops_spans_events_and_metrics(models_home, receiver, tmp_path):
    server = start_server(
        models_home, tmp_path, receiver.grpc_endpoint, "grpc", 1.0, env={"TELEMETRY": "off"}
    )
    try:
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
        response = requests.post(f"{server.url}/predict", json={"text": TEXT}, headers=headers, timeout=10)
        assert response.status_code == 200 and response.json()["label"] == "rec.sport.baseball"
        assert requests.post(f"{server.url}/predict", data=b" ", timeout=10).status_code == 400
        samples = scrape(server.url)
    finally:
        assert server.stop() == 0  # SIGTERM writes the queued lines and exports the pending spans
    assert receiver.trace(trace_id) == []
    assert not [line for line in server.log_lines() if '"event":' in line]
    assert value(samples, "newsgroups_predictions_total") == 0
    assert value(samples, "newsgroups_http_requests_total") == 0
    assert value(samples, "newsgroups_rejected_requests_total") == 0


def test_a_bad_telemetry_setting_is_a_clear_startup_error(models_home, tmp_path):
    try:
        start_server(models_home, tmp_path, env={"TELEMETRY": "maybe"}, timeout=60)
    except AssertionError:
        pass
    else:
        raise AssertionError("the service started with TELEMETRY=maybe")
    (log,) = tmp_path.glob("home-*/stdout.log")
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # JSON, the error too
    (error,) = [line for line in lines if line["level"] == "critical"]
    assert "TELEMETRY\n  Input should be 'on' or 'off'" in error["exception"]
