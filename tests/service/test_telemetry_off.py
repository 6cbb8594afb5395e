"""TELEMETRY=off, the benchmark's baseline: predictions unchanged, none of the service's own telemetry."""

from __future__ import annotations

import secrets

import requests

from support.processes import poll_until
from support.service_process import scrape, start_server, value

TEXT = "The pitcher threw a fastball and the batter hit a home run"


def test_telemetry_off_keeps_predictions_and_drops_events_metrics_and_spans(models_home, receiver, tmp_path):
    server = start_server(
        models_home, tmp_path, receiver.grpc_endpoint, "grpc", 1.0, env={"TELEMETRY": "off"}
    )
    try:
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
        response = requests.post(f"{server.url}/predict", json={"text": TEXT}, headers=headers, timeout=10)
        assert response.status_code == 200 and response.json()["label"] == "rec.sport.baseball"
        # BentoML's own telemetry has its own switches: its server span still arrives. It ends after
        # the inference spans would have, so they would be in the same export or an earlier one.
        spans = poll_until(
            lambda: [
                s for s in receiver.trace(trace_id) if s.parent_span_id == headers["traceparent"][36:52]
            ],
            timeout=20,
            what="the server span",
        )
        assert spans and not [
            s for s in receiver.trace(trace_id) if s.scope.startswith("newsgroups_classifier")
        ]
        # The access line is queued after the request's prediction event would have been.
        poll_until(
            lambda: any(trace_id in line for line in server.log_lines()), timeout=10, what="the access line"
        )
        assert not [line for line in server.log_lines() if '"event":"prediction"' in line]
        assert value(scrape(server.url), "newsgroups_predictions_total") == 0
    finally:
        server.stop()


def test_a_bad_telemetry_setting_is_a_clear_startup_error(models_home, tmp_path):
    try:
        start_server(models_home, tmp_path, env={"TELEMETRY": "maybe"}, timeout=60)
    except AssertionError as error:
        assert "TELEMETRY\n  Input should be 'on' or 'off'" in str(error)
    else:
        raise AssertionError("the service started with TELEMETRY=maybe")
