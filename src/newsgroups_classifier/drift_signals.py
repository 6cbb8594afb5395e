"""Drift signals of predictions (confidence, entropy, token count, out-of-vocabulary ratio) and the
training baseline they are compared with, computed the same way for held-out data and live traffic."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HISTOGRAM_SIGNALS = ("confidence", "entropy", "token_count", "oov_ratio")
BASELINE_BINS = 10


@dataclass(frozen=True)
class Signals:
    """What the monitoring knows about a set of predictions: one entry per prediction, as numpy arrays
    (the service computes them for each batch it predicts, training for the held-out split)."""

    confidence: np.ndarray  # calibrated probability of the predicted class
    entropy: np.ndarray  # of the class probabilities, normalised to [0, 1]
    token_count: np.ndarray  # word tokens after stop-word removal
    oov_ratio: np.ndarray  # share of those tokens missing from the model's vocabulary
    empty: np.ndarray  # no token the model knows: the prediction is the prior

    def value(self, name: str) -> np.ndarray:
        return getattr(self, name)


def signals(token_counts: Sequence[int], known: Sequence[int], probabilities: np.ndarray) -> Signals:
    """Signals of predictions from their inputs' token counts, how many of those tokens the model
    knows (`model.vectorize`), and their class probabilities (rows)."""
    tokens = np.asarray(token_counts, dtype=float)
    known = np.asarray(known, dtype=float)
    probabilities = np.asarray(probabilities, dtype=float)
    oov_ratio = 1.0 - np.divide(known, tokens, out=np.zeros_like(known), where=tokens > 0)
    return Signals(
        confidence=probabilities.max(axis=1),
        entropy=normalised_entropy(probabilities),
        token_count=tokens,
        oov_ratio=oov_ratio,
        empty=known == 0,
    )


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Entropy of each row of class probabilities, divided by its maximum (log of the class count)."""
    classes = probabilities.shape[1]
    if classes < 2:
        return np.zeros(len(probabilities))
    logs = np.log(probabilities, out=np.zeros_like(probabilities), where=probabilities > 0)
    return -(probabilities * logs).sum(axis=1) / math.log(classes)


def bucket_edges(values: Sequence[float], bins: int = BASELINE_BINS, decimals: int = 3) -> list[float]:
    """Inner quantile edges, rounded and strictly increasing, usable directly as histogram buckets.

    Quantile edges give each bucket about the same baseline mass, which keeps PSI stable.
    """
    quantiles = np.quantile(np.asarray(values, dtype=float), np.linspace(0, 1, bins + 1)[1:-1])
    return sorted({round(float(q), decimals) for q in quantiles})


def cumulative_shares(values: Sequence[float], edges: Sequence[float]) -> list[float]:
    """Share of values <= each edge: what a Prometheus histogram's buckets divided by its count give."""
    data = np.sort(np.asarray(values, dtype=float))
    return [float(np.searchsorted(data, edge, side="right") / len(data)) for edge in edges]


def build_baseline(predicted: Sequence[str], classes: Sequence[str], observed: Signals) -> dict:
    """The reference distributions that live traffic is compared with (PSI, KS)."""
    n = len(predicted)
    baseline: dict = {
        "samples": n,
        "class_share": {label: sum(1 for p in predicted if p == label) / n for label in classes},
        "empty_share": float(observed.empty.sum()) / n,
        "histograms": {},
    }
    for name in HISTOGRAM_SIGNALS:
        values = observed.value(name)
        edges = bucket_edges(values, decimals=0 if name == "token_count" else 3)
        baseline["histograms"][name] = {"edges": edges, "cdf": cumulative_shares(values, edges)}
    return baseline
