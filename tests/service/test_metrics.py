"""Metrics: families and labels on /metrics, exact counts summed over two workers, visible at once."""

from __future__ import annotations

import json

import requests

from newsgroups_classifier.data import DEFAULT_CATEGORIES
from support.service_process import scrape, start_server, value

TEXT = "The hockey season starts and the goalie is ready for the puck"


FAMILIES = (
    "newsgroups_http_requests_total",
    "newsgroups_http_request_duration_seconds_bucket",
    "newsgroups_http_requests_in_progress",
    "newsgroups_batch_size_bucket",
    "newsgroups_predictions_total",
    "newsgroups_prediction_confidence_bucket",
    "newsgroups_prediction_entropy_bucket",
    "newsgroups_input_tokens_bucket",
    "newsgroups_input_oov_ratio_bucket",
    "newsgroups_empty_inputs_total",
    "newsgroups_rejected_requests_total",
    "newsgroups_feedback_total",
    "newsgroups_model_info",
    "newsgroups_baseline_class_share",
    "newsgroups_baseline_cdf",
    "newsgroups_baseline_empty_share",
    "newsgroups_inference_duration_seconds_bucket",
    "newsgroups_telemetry_errors_total",
    "newsgroups_log_lines_dropped_total",
)


def test_expected_families_and_precreated_labels(service):
    assert requests.post(f"{service.url}/predict", json={"text": TEXT}, timeout=10).ok
    samples = scrape(service.url)
    missing = [family for family in FAMILIES if family not in {name for name, _ in samples}]
    assert not missing, missing
    # Every class and every (predicted, true) pair exists before any traffic needs it.
    predicted = {dict(lbls)["label"] for name, lbls in samples if name == "newsgroups_predictions_total"}
    assert predicted == set(DEFAULT_CATEGORIES)
    pairs = {
        (dict(lbl)["predicted_label"], dict(lbl)["true_label"])
        for n, lbl in samples
        if n == "newsgroups_feedback_total"
    }
    assert len(pairs) == 16
    shares = [v for (n, _), v in samples.items() if n == "newsgroups_baseline_class_share"]
    assert abs(sum(shares) - 1) < 1e-9


def test_baseline_cdf_matches_the_histogram_buckets(service, models_home):
    (model_dir,) = (models_home / "models" / "newsgroups_classifier").glob("*/baseline.json")
    baseline = json.loads(model_dir.read_text())
    samples = scrape(service.url)
    bucket_les = {dict(lbl)["le"] for n, lbl in samples if n == "newsgroups_prediction_confidence_bucket"}
    cdf = {
        dict(lbl)["le"]: v
        for (n, lbl), v in samples.items()
        if n == "newsgroups_baseline_cdf" and dict(lbl)["signal"] == "confidence"
    }
    assert set(cdf) == bucket_les  # same spelling of le, so PromQL can join on it
    assert [cdf[le] for le in sorted(cdf, key=float)] == [*baseline["histograms"]["confidence"]["cdf"], 1.0]


def test_counts_move_by_exactly_the_requests_made_with_two_workers(service):
    # Every prediction is counted before its response is sent: a scrape right after shows it.
    before = scrape(service.url)
    labels = [
        requests.post(f"{service.url}/predict", json={"text": TEXT}, timeout=10).json()["label"]
        for _ in range(30)
    ]
    batch = requests.post(f"{service.url}/predict_batch", json={"texts": [TEXT] * 5}, timeout=10).json()
    requests.post(f"{service.url}/predict", data=b"   ", headers={"Content-Type": "text/plain"}, timeout=10)
    after = scrape(service.url)
    name = "newsgroups_predictions_total"
    label = labels[0]
    assert set(labels) == {label} and all(p["label"] == label for p in batch)
    assert value(after, name, label=label) - value(before, name, label=label) == 35
    assert value(after, name) - value(before, name) == 35
    confidence = "newsgroups_prediction_confidence_count"
    assert value(after, confidence) - value(before, confidence) == 35
    inference = "newsgroups_inference_duration_seconds_count"  # one per model call: here one per request
    for endpoint, count in (("predict", 30), ("predict_batch", 1)):
        moved = value(after, inference, endpoint=endpoint) - value(before, inference, endpoint=endpoint)
        assert moved == count, endpoint
    rejected = "newsgroups_rejected_requests_total"
    assert value(after, rejected, reason="empty_text") - value(before, rejected, reason="empty_text") == 1
    # The requests, by route and status code; one model call per /predict_batch request here.
    requests_total = "newsgroups_http_requests_total"
    for route, code, count in (("/predict", "200", 30), ("/predict", "400", 1), ("/predict_batch", "200", 1)):
        labels = {"route": route, "method": "POST", "code": code}
        moved = value(after, requests_total, **labels) - value(before, requests_total, **labels)
        assert moved == count, (route, code)
    duration = "newsgroups_http_request_duration_seconds_count"
    assert value(after, duration, route="/predict") - value(before, duration, route="/predict") == 31
    assert value(after, "newsgroups_http_requests_in_progress", route="/predict") == 0


def test_restarting_another_instance_wipes_nothing(service, models_home, tmp_path):
    # Each instance has its own BentoML home: another one starting (and clearing its own metrics
    # folder, as BentoML does at every start) leaves this one's counts alone.
    before = value(scrape(service.url), "newsgroups_predictions_total")
    assert requests.post(f"{service.url}/predict", json={"text": TEXT}, timeout=10).ok
    other = start_server(models_home, tmp_path, sample_rate=0.0)
    other.stop()
    other = start_server(models_home, tmp_path, sample_rate=0.0)
    try:
        assert value(scrape(service.url), "newsgroups_predictions_total") == before + 1
        assert value(scrape(other.url), "newsgroups_predictions_total") == 0
    finally:
        other.stop()
