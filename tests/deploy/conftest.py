"""Fixtures of the offline deployment checks: Helm releases, the tools, and a running service with a little
traffic (its real /metrics and log lines, and its series as Prometheus stores them)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from support.charts import LOG_AGENTS, Release, cluster_releases, run
from support.deploy_files import KNOWN_TRACE_ID, TEXTS, TRACEPARENT, Traffic
from support.processes import built_tool, poll_until
from support.service_process import start_server


def metrics_text(url: str) -> str:
    """/metrics as Prometheus' text format (what a scrape gets that does not ask for OpenMetrics)."""
    response = requests.get(f"{url}/metrics", timeout=30, headers={"Accept": "text/plain; version=0.0.4"})
    response.raise_for_status()
    return response.text


def openmetrics_from_text(text: str, stamp: int) -> str:
    """The text exposition as OpenMetrics for `promtool tsdb create-blocks-from openmetrics`: counter
    families named without `_total`, a timestamp on every sample, and the closing `# EOF`."""
    lines = []
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            kind, name, rest = line[2:].split(" ", 2)
            if kind == "TYPE" and rest == "counter" or kind == "HELP" and name.endswith("_total"):
                name = name.removesuffix("_total")
            line = f"# {kind} {name} {rest}"
        elif line and not line.startswith("#"):
            line = f"{line} {stamp}"
        lines.append(line)
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="session")
def releases() -> dict[str, Release]:
    """Every release of the stack: the default's, and Promtail's (`make cluster-up LOG_AGENT=promtail`)."""
    default = cluster_releases()
    assert set(default) == {
        "metrics-server",
        "minio",
        "loki",
        "tempo",
        "prometheus",
        "opentelemetry-collector",
        "grafana",
    }
    with_promtail = cluster_releases(LOG_AGENT="promtail")
    assert set(with_promtail) == set(default) | {"promtail"}
    return {**default, "promtail": with_promtail["promtail"]}


@pytest.fixture(scope="session")
def renderings() -> dict[str, Release]:
    """Every distinct rendering `make cluster-up` installs, by a name: both log agents' variants."""
    found = {}
    for agent in LOG_AGENTS:
        for name, release in cluster_releases(LOG_AGENT=agent).items():
            if release not in found.values():
                found[name if name not in found else f"{name} (LOG_AGENT={agent})"] = release
    return found


@pytest.fixture(scope="session")
def promtool() -> Path:
    """promtool of the Prometheus version the chart deploys (3.x normalises histogram `le` labels)."""
    return built_tool("tests/e2e/stack/build.sh", "promtool", "make stack-bin")


@pytest.fixture(scope="session")
def kube_score() -> Path:
    return built_tool("tests/deploy/tools.sh", "kube-score", "make deploy-tools")


@pytest.fixture(scope="session")
def podsecurity() -> Path:
    return built_tool("tests/deploy/tools.sh", "podsecurity", "make deploy-tools")


@pytest.fixture(scope="session")
def traffic(models_home, tmp_path_factory) -> Iterator[Traffic]:
    """A service of its own (two workers, as the `service` fixture), so other tests' counts stay untouched."""
    server = start_server(
        models_home, tmp_path_factory.mktemp("deploy-service"), sample_rate=0.0, env={"WORKERS": "2"}
    )
    try:
        first = requests.post(
            f"{server.url}/predict", data=TEXTS[0], headers={"traceparent": TRACEPARENT}, timeout=30
        )
        first.raise_for_status()
        for text in TEXTS[1:]:
            requests.post(f"{server.url}/predict", data=text, timeout=30).raise_for_status()
        requests.post(f"{server.url}/predict_batch", json={"texts": TEXTS[:3]}, timeout=30).raise_for_status()
        prediction = first.json()
        feedback = {"prediction_id": prediction["prediction_id"], "label": prediction["label"]}
        requests.post(f"{server.url}/feedback", json=feedback, timeout=30).raise_for_status()
        assert requests.post(f"{server.url}/predict", data="   ", timeout=30).status_code == 400
        poll_until(
            lambda: any('"reason":"empty_text"' in line for line in server.log_lines()),
            timeout=30,
            what="the rejected request's event",
        )
        # The prediction metrics are counted when the events are written, up to a flush later.
        poll_until(
            lambda: "newsgroups_predictions_total{" in (text := metrics_text(server.url)) and text,
            timeout=30,
            what="the prediction metrics on /metrics",
        )
        poll_until(
            lambda: any(KNOWN_TRACE_ID in line for line in server.log_lines()),
            timeout=30,
            what="the known request's prediction event",
        )
        yield Traffic(metrics_text(server.url), server.log_lines(), prediction["model_version"])
    finally:
        server.stop()


@pytest.fixture(scope="session")
def stored_series(traffic, promtool, tmp_path_factory) -> list[dict[str, str]]:
    """The label sets of the service's series as Prometheus 3 stores them after a scrape.

    The exposition goes through Prometheus' own parser (promtool tsdb create-blocks-from), which normalises
    histogram `le` values, then the stored series are dumped.
    """
    directory = tmp_path_factory.mktemp("tsdb")
    source = directory / "metrics.om"
    source.write_text(openmetrics_from_text(traffic.metrics, int(time.time())))
    blocks = directory / "blocks"
    created = run([promtool, "tsdb", "create-blocks-from", "openmetrics", source, blocks])
    assert created.returncode == 0, created.stderr
    (blocks / "wal").mkdir()
    dumped = run([promtool, "tsdb", "dump", "--format=seriesjson", blocks])
    assert dumped.returncode == 0, dumped.stderr
    return [json.loads(line) for line in dumped.stdout.splitlines() if line.startswith("{")]
