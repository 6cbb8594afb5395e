"""The service's Prometheus metrics: HTTP requests, ML signals, rejections, feedback and the training
baseline.

Workers run prometheus_client in multiprocess mode (BentoML sets it up): counters and histograms are
summed over workers on /metrics; gauges say how to combine them (`max`: every worker writes the same;
`livesum`: the sum over live workers, once a dead worker's files are marked dead).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.utils import floatToGoString

from .drift_signals import HISTOGRAM_SIGNALS, Signals

PREFIX = "newsgroups"
INFERENCE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)
# Request latency: the SLO's threshold (250 ms) is a bucket edge.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ENDPOINTS = ("predict", "predict_batch", "feedback")
REJECTION_REASONS = (
    "empty_text",
    "body_too_large",
    "body_timeout",
    "invalid_utf8",
    "invalid_unicode",
    "malformed_json",
    "invalid_field",
    "unsupported_media_type",
    "batch_too_large",
    "malformed_id",
    "unknown_id",
    "expired_id",
    "duplicate_id",
    "unknown_label",
    "not_found",
    "method_not_allowed",
    "invalid_request",
)
SIGNAL_HISTOGRAMS = {
    "confidence": ("prediction_confidence", "Calibrated probability of the predicted class"),
    "entropy": ("prediction_entropy", "Entropy of the class probabilities, normalised to [0, 1]"),
    "token_count": ("input_tokens", "Word tokens per input after stop-word removal"),
    "oov_ratio": ("input_oov_ratio", "Share of input tokens missing from the model vocabulary"),
}

# Module level: the HTTP edge counts requests before any service instance exists. Label values come
# from fixed sets (routes, methods, status codes, reasons), never from what a client wrote.
HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests", "HTTP requests by route, method and status code", ["route", "method", "code"]
)
HTTP_DURATION = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time to answer a request, by route",
    ["route"],
    buckets=HTTP_BUCKETS,
)
HTTP_IN_PROGRESS = Gauge(
    f"{PREFIX}_http_requests_in_progress",
    "Requests being answered, by route",
    ["route"],
    multiprocess_mode="livesum",
)
REJECTED = Counter(
    f"{PREFIX}_rejected_requests", "Requests rejected with a 4xx, by reason", ["endpoint", "reason"]
)


# Each request's children, made once per label set (the label values are fixed sets).
@functools.cache
def http_in_progress(route: str) -> Gauge:
    return HTTP_IN_PROGRESS.labels(route)


@functools.cache
def http_requests(route: str, method: str, code: int) -> Counter:
    return HTTP_REQUESTS.labels(route, method, str(code))


@functools.cache
def http_duration(route: str) -> Histogram:
    return HTTP_DURATION.labels(route)


DROPPED_LINES = Counter(
    f"{PREFIX}_log_lines_dropped",
    "Log lines dropped: stdout blocked with the queue full, or a line that could not be formatted or written",
)
TELEMETRY_STAGES = ("spans", "metrics", "events", "feedback")
TELEMETRY_ERRORS = Counter(
    f"{PREFIX}_telemetry_errors",
    "Telemetry that could not be recorded, by stage (predictions still answered; feedback got a 503)",
    ["stage"],
)


def model_gauge(name: str, help_text: str, labels: list[str]) -> Gauge:
    """A gauge of the loaded model, set alike by every worker: `max` reports it once, not per worker."""
    return Gauge(f"{PREFIX}_{name}", help_text, labels, multiprocess_mode="max")


def count_rejection(endpoint: str, reason: str) -> None:
    REJECTED.labels(endpoint=endpoint, reason=reason).inc()


def exposition() -> tuple[bytes, str]:
    """/metrics: every worker's samples, merged (prometheus_client's multiprocess collector)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _workers() -> Path:
    """Where each worker of this instance registers: among the multiprocess files (which BentoML wipes
    at every start, so no entry outlives its instance)."""
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) / "workers"


def register_worker() -> None:
    """Register this worker, so that its live gauges are removed once it is dead (`forget_dead_workers`)."""
    forget_dead_workers()
    _workers().mkdir(exist_ok=True)
    (_workers() / str(os.getpid())).write_text(str(psutil.Process().create_time()))


def forget_dead_workers() -> None:
    """Mark registered workers that are gone as dead: their requests in progress no longer count (a
    SIGKILLed worker never says so itself). A pid reused by another process is dead too."""
    if not _workers().is_dir():
        return
    for entry in _workers().iterdir():
        pid, started = int(entry.name), float(entry.read_text() or 0)
        try:
            alive = psutil.Process(pid).create_time() == started
        except psutil.Error:
            alive = False
        if not alive:
            multiprocess.mark_process_dead(pid)
            entry.unlink(missing_ok=True)


class ServiceMetrics:
    """Metric families whose buckets and label values come from the loaded model and its baseline."""

    def __init__(self, model_name: str, model_version: str, classes: list[str], baseline: dict):
        self.version = model_version
        labels = ["model_version"]
        self.predictions = Counter(
            f"{PREFIX}_predictions", "Predictions by predicted label", [*labels, "label"]
        )
        self.empty_inputs = Counter(
            f"{PREFIX}_empty_inputs", "Predictions on inputs with no known token", labels
        )
        self.feedback = Counter(
            f"{PREFIX}_feedback",
            "Ground truth received, by predicted and true label",
            [*labels, "predicted_label", "true_label"],
        )
        self.inference_seconds = Histogram(
            f"{PREFIX}_inference_duration_seconds",
            "Time a model call took (one serves every request of an adaptive batch)",
            ["endpoint", *labels],
            buckets=INFERENCE_BUCKETS,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Texts per model call (adaptive batching merges concurrent requests)",
            ["endpoint"],
            buckets=BATCH_BUCKETS,
        )
        self.signal_histograms = {
            signal: Histogram(
                f"{PREFIX}_{name}", help_text, labels, buckets=baseline["histograms"][signal]["edges"]
            )
            for signal, (name, help_text) in SIGNAL_HISTOGRAMS.items()
        }
        self._publish_baseline(model_name, classes, baseline)
        self._precreate(classes)

    def _publish_baseline(self, model_name: str, classes: list[str], baseline: dict) -> None:
        info = model_gauge("model_info", "The model being served (value 1)", ["model_name", "model_version"])
        info.labels(model_name=model_name, model_version=self.version).set(1)
        share = model_gauge(
            "baseline_class_share",
            "Share of each predicted class on held-out data",
            ["model_version", "label"],
        )
        for label in classes:
            share.labels(model_version=self.version, label=label).set(baseline["class_share"][label])
        model_gauge(
            "baseline_empty_share", "Share of held-out inputs with no known token", ["model_version"]
        ).labels(self.version).set(baseline["empty_share"])
        cdf = model_gauge(
            "baseline_cdf",
            "Held-out share at or below each bucket edge of the signal's histogram (le as in its buckets)",
            ["model_version", "signal", "le"],
        )
        for signal in HISTOGRAM_SIGNALS:
            histogram = baseline["histograms"][signal]
            for edge, value in zip(histogram["edges"], histogram["cdf"], strict=True):
                cdf.labels(model_version=self.version, signal=signal, le=floatToGoString(edge)).set(value)
            cdf.labels(model_version=self.version, signal=signal, le="+Inf").set(1.0)
        model_gauge(
            "baseline_samples", "Held-out documents the baseline was computed on", ["model_version"]
        ).labels(self.version).set(baseline["samples"])

    def _precreate(self, classes: list[str]) -> None:
        """Every label combination exists from the start, so rates and ratios have no missing series.
        The children a prediction touches are kept, so a prediction looks up no label values."""
        self._predicted = {label: self.predictions.labels(self.version, label) for label in classes}
        for label in classes:
            for true_label in classes:
                self.feedback.labels(self.version, label, true_label)
        self._empty = self.empty_inputs.labels(self.version)
        for endpoint in (*ENDPOINTS, "other"):
            for reason in REJECTION_REASONS:
                REJECTED.labels(endpoint=endpoint, reason=reason)
        for endpoint in ENDPOINTS:  # an API's error ratio is 0, not missing, before its first error
            for code in ("200", "500"):
                HTTP_REQUESTS.labels(f"/{endpoint}", "POST", code)
        for stage in TELEMETRY_STAGES:
            TELEMETRY_ERRORS.labels(stage)
        self._inference = {
            endpoint: self.inference_seconds.labels(endpoint, self.version) for endpoint in ENDPOINTS[:2]
        }
        self._batch_size = {endpoint: self.batch_size.labels(endpoint) for endpoint in ENDPOINTS[:2]}
        self._signals = [
            (signal, histogram.labels(self.version)) for signal, histogram in self.signal_histograms.items()
        ]

    def observe_predictions(self, labels: list[str], signals: Signals) -> None:
        """Count predictions with their predicted labels and signals (one entry per prediction)."""
        for label in labels:
            self._predicted[label].inc()
        self._empty.inc(int(signals.empty.sum()))
        for signal, histogram in self._signals:
            for value in signals.value(signal).tolist():
                histogram.observe(value)

    def observe_model_call(self, endpoint: str, texts: int, seconds: float) -> None:
        """One model call: its batch size and its time."""
        self._batch_size[endpoint].observe(texts)
        self._inference[endpoint].observe(seconds)

    def observe_feedback(self, model_version: str, predicted: str, true_label: str) -> None:
        self.feedback.labels(model_version, predicted, true_label).inc()
