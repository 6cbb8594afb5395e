"""ML monitoring signals, computed the same way for the training baseline and for live traffic."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

HISTOGRAM_SIGNALS = ("confidence", "entropy", "token_count", "oov_ratio")
BASELINE_BINS = 10


@dataclass(frozen=True)
class Signals:
    """What the monitoring knows about one prediction."""

    confidence: float  # calibrated probability of the predicted class
    entropy: float  # of the class probabilities, normalised to [0, 1]
    token_count: int  # word tokens after stop-word removal
    oov_ratio: float  # share of those tokens missing from the model's vocabulary
    empty: bool  # no token the model knows: the prediction is the prior

    def value(self, name: str) -> float:
        return float(getattr(self, name))


def signals(tokens: Sequence[str], vocabulary: Mapping[str, int], probabilities: Sequence[float]) -> Signals:
    known = sum(map(vocabulary.__contains__, tokens))
    probabilities = np.asarray(probabilities, dtype=float).tolist()  # Python floats: faster one by one
    return Signals(
        confidence=float(max(probabilities)),
        entropy=normalised_entropy(probabilities),
        token_count=len(tokens),
        oov_ratio=1.0 - known / len(tokens) if tokens else 1.0,
        empty=known == 0,
    )


def normalised_entropy(probabilities: Sequence[float]) -> float:
    total = -sum(p * math.log(p) for p in probabilities if p > 0)
    return total / math.log(len(probabilities)) if len(probabilities) > 1 else 0.0


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


def build_baseline(predicted: Sequence[str], classes: Sequence[str], observed: Sequence[Signals]) -> dict:
    """The reference distributions that live traffic is compared with (PSI, KS)."""
    n = len(observed)
    baseline: dict = {
        "samples": n,
        "class_share": {label: sum(1 for p in predicted if p == label) / n for label in classes},
        "empty_share": sum(1 for s in observed if s.empty) / n,
        "histograms": {},
    }
    for name in HISTOGRAM_SIGNALS:
        values = [s.value(name) for s in observed]
        edges = bucket_edges(values, decimals=0 if name == "token_count" else 3)
        baseline["histograms"][name] = {"edges": edges, "cdf": cumulative_shares(values, edges)}
    return baseline
