"""The service's Prometheus metrics: ML signals, rejections, feedback and the training baseline.

Workers run prometheus_client in multiprocess mode (BentoML sets it up): counters and histograms are
summed over workers on /metrics; gauges say how to combine them (`max`: every worker writes the same).
"""

from __future__ import annotations

from collections import Counter as Tally

import numpy as np
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.utils import floatToGoString

from .monitoring import HISTOGRAM_SIGNALS, Signals

PREFIX = "newsgroups"
INFERENCE_HISTOGRAM = f"{PREFIX}_inference_duration_seconds"  # the one with exemplars
INFERENCE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)
ENDPOINTS = ("predict", "predict_batch", "feedback")
REJECTION_REASONS = (
    "empty_text",
    "body_too_large",
    "invalid_utf8",
    "malformed_json",
    "invalid_field",
    "unsupported_media_type",
    "batch_too_large",
    "malformed_id",
    "unknown_id",
    "expired_id",
    "duplicate_id",
    "unknown_label",
)
SIGNAL_HISTOGRAMS = {
    "confidence": ("prediction_confidence", "Calibrated probability of the predicted class"),
    "entropy": ("prediction_entropy", "Entropy of the class probabilities, normalised to [0, 1]"),
    "token_count": ("input_tokens", "Word tokens per input after stop-word removal"),
    "oov_ratio": ("input_oov_ratio", "Share of input tokens missing from the model vocabulary"),
}

# Module level: the middleware counts rejections before any service instance exists.
REJECTED = Counter(
    f"{PREFIX}_rejected_requests", "Requests rejected with a 4xx, by reason", ["endpoint", "reason"]
)
DROPPED_LINES = Counter(
    f"{PREFIX}_log_lines_dropped",
    "Log lines and prediction events dropped (not logged, not counted) while stdout was blocked",
)


def model_gauge(name: str, help_text: str, labels: list[str]) -> Gauge:
    """A gauge of the loaded model, set alike by every worker: `max` reports it once, not per worker."""
    return Gauge(f"{PREFIX}_{name}", help_text, labels, multiprocess_mode="max")


def count_rejection(endpoint: str, reason: str) -> None:
    REJECTED.labels(endpoint=endpoint, reason=reason).inc()


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """What `histogram.observe(value)` does for each value, with one increment per bucket touched.

    prometheus_client has no bulk observation, and each observation is two writes to the shared
    multiprocess file, so this adds the counts to the (labelled) histogram's bucket and sum values
    itself: the one place that relies on those attributes (tested against `observe`).
    """
    bounds = histogram._upper_bounds  # ascending, the last +Inf: a value goes in the first bound >= it
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):  # NaN: in no bucket
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(np.sum(values)))


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
            INFERENCE_HISTOGRAM,
            "Time spent in the prediction handler (exemplars: trace_id)",
            ["endpoint", *labels],
            buckets=INFERENCE_BUCKETS,
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

        The children a prediction touches are kept: looking them up per request costs more than the
        observation itself.
        """
        self._predicted = {label: self.predictions.labels(self.version, label) for label in classes}
        for label in classes:
            for true_label in classes:
                self.feedback.labels(self.version, label, true_label)
        self._empty = self.empty_inputs.labels(self.version)
        for endpoint in ENDPOINTS:
            for reason in REJECTION_REASONS:
                REJECTED.labels(endpoint=endpoint, reason=reason)
        self._inference = {
            endpoint: self.inference_seconds.labels(endpoint, self.version) for endpoint in ENDPOINTS[:2]
        }
        self._signals = [
            (signal, histogram.labels(self.version)) for signal, histogram in self.signal_histograms.items()
        ]

    def observe_predictions(self, labels: list[str], signals: Signals) -> None:
        """Count predictions with their predicted labels and signals (one entry per prediction)."""
        for label, count in Tally(labels).items():
            self._predicted[label].inc(count)
        empty = int(signals.empty.sum())
        if empty:
            self._empty.inc(empty)
        for signal, histogram in self._signals:
            observe_many(histogram, signals.value(signal))

    def observe_inference_seconds(self, endpoint: str, seconds: np.ndarray) -> None:
        observe_many(self._inference[endpoint], seconds)

    def observe_feedback(self, model_version: str, predicted: str, true_label: str) -> None:
        self.feedback.labels(model_version, predicted, true_label).inc()
