"""The fuzzing tier's budget, seed and marker, and what must hold after a fuzz run (tests/fuzz/).

Seeded, so a run is reproducible (FUZZ_SEED); its size scales with FUZZ_SECONDS, the wall time a run of
the generated cases is meant to take (`make fuzz FUZZ_SECONDS=1800`; a default run is DEFAULT_SECONDS).
After every fuzz run the service must still be ready, every line it printed meanwhile must be one JSON
object without a traceback, no generated text may be in its log, and its metrics may only have series
whose label values come from the service's fixed sets, however many requests were sent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import requests
from prometheus_client.parser import text_string_to_metric_families

from newsgroups_classifier import http_edge, metrics
from support.service_process import Server, scrape, value

DEFAULT_SECONDS = 70.0  # measured: the generated cases of a default run, servers not counted
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", DEFAULT_SECONDS))
SEED = int(os.environ.get("FUZZ_SEED", "24"))
# Planted in every generated text: it must never reach the log (LOG_TEXT is "none").
MARKER = "zq-fuzz-marker-zq"


def examples(default: int) -> int:
    """How many cases to generate: `default` in a default run, scaled to FUZZ_SECONDS."""
    return max(1, round(default * FUZZ_SECONDS / DEFAULT_SECONDS))


def series(url: str) -> set[tuple[str, tuple]]:
    """Every series on /metrics: name and labels."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


ROUTES = {*http_edge.ROUTES, http_edge.STATIC.label, http_edge.UNMATCHED.label}
ALLOWED_LABEL_VALUES = {
    "route": ROUTES,
    "method": {*http_edge.METHODS, "OTHER"},
    "code": {str(code) for code in range(100, 600)},
    "endpoint": {*metrics.ENDPOINTS, "other"},
    "reason": {*metrics.REJECTION_REASONS, *http_edge.REASONS.values(), "error"},
}


# However many requests: per route, its in-progress gauge, its latency histogram (a series per bucket, +Inf,
# sum and count) and a request counter per method and status code the service answers with.
STATUS_CODES = (200, 400, 404, 405, 408, 409, 410, 413, 415, 422, 500, 503, 504)
SERIES_CEILING = len(ROUTES) * (
    1 + len(metrics.HTTP_BUCKETS) + 3 + len(ALLOWED_LABEL_VALUES["method"]) * len(STATUS_CODES)
)


def labels_outside_the_fixed_sets(found: set[tuple[str, tuple]]) -> set[tuple[str, str, str]]:
    """(series, label, value) of the request metrics whose value is not one of the service's own."""
    request_metrics = ("newsgroups_http_", "newsgroups_rejected_requests")
    return {
        (name, label, value)
        for name, labels in found
        if name.startswith(request_metrics)
        for label, value in labels
        if label in ALLOWED_LABEL_VALUES and value not in ALLOWED_LABEL_VALUES[label]
    }


@dataclass(frozen=True)
class Snapshot:
    """A test's "before": the series on /metrics, and how many lines the service had printed."""

    series: set[tuple[str, tuple]]
    lines: int


def snapshot(server: Server) -> Snapshot:
    return Snapshot(series(server.url), len(server.log_lines()))


def assert_still_well(server: Server, before: Snapshot) -> None:
    """What must hold after a fuzz run (see the module's docstring), of the lines printed since `before`."""
    assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
    assert server.process.poll() is None
    lines = server.log_lines()[before.lines :]
    not_json = [line for line in lines if not _is_json_object(line)]
    assert not not_json, f"{len(not_json)} lines are not JSON objects, e.g. {not_json[:3]}"
    leaked = [line for line in lines if MARKER in line]
    assert not leaked, f"{len(leaked)} log lines hold generated text, e.g. {leaked[0][:300]}"
    tracebacks = [line for line in lines if "Traceback" in line]
    assert not tracebacks, f"{len(tracebacks)} tracebacks logged, e.g. {tracebacks[0][:1000]}"
    after = series(server.url)
    assert not labels_outside_the_fixed_sets(after), labels_outside_the_fixed_sets(after)
    assert len(after - before.series) <= SERIES_CEILING, sorted(after - before.series)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def counted_4xx(url: str) -> tuple[float, float]:
    """4xx answers the service counted, and the rejections it counted (each 4xx is one, with its reason)."""
    samples = scrape(url)
    answered = sum(
        count
        for (name, labels), count in samples.items()
        if name == "newsgroups_http_requests_total" and dict(labels)["code"].startswith("4")
    )
    return answered, value(samples, "newsgroups_rejected_requests_total")
