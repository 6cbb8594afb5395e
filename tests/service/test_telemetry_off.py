"""TELEMETRY=off, the benchmark's baseline: predictions unchanged, none of the service's own telemetry."""

from __future__ import annotations

import secrets
import time

import requests

from helpers import poll_until, scrape, start_server, value

TEXT = "The pitcher threw a fastball and the batter hit a home run"


def test_telemetry_off_keeps_predictions_and_drops_events_metrics_and_spans(models_home, receiver, tmp_path):
    server = start_server(
        models_home, tmp_path, receiver.grpc_endpoint, "grpc", 1.0, env={"TELEMETRY": "off"}
    )
    try:
        trace_id = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        response = requests.post(f"{server.url}/predict", json={"text": TEXT}, headers=headers, timeout=10)
        assert response.status_code == 200 and response.json()["label"] == "rec.sport.baseball"
        # BentoML's own telemetry has its own switches: its server span still arrives.
        poll_until(lambda: receiver.trace(trace_id), timeout=20, what="the server span")
        time.sleep(1)  # several flushes of the log buffer and of the span exporter
        assert [span for span in receiver.trace(trace_id) if span.scope == "newsgroups_classifier"] == []
        assert not [line for line in server.log_lines() if '"event":"prediction"' in line]
        assert value(scrape(server.url), "newsgroups_predictions_total") == 0
    finally:
        server.stop()


def test_a_bad_telemetry_setting_is_a_clear_startup_error(models_home, tmp_path):
    try:
        start_server(models_home, tmp_path, env={"TELEMETRY": "maybe"}, timeout=60)
    except AssertionError as error:
        assert "TELEMETRY must be on or off, got 'maybe'" in str(error)
    else:
        raise AssertionError("the service started with TELEMETRY=maybe")
