"""Fixtures of the offline deployment checks: Helm releases, the tools, and a running service with a little
traffic (its real /metrics and log lines, and its series as Prometheus stores them)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from deploy_files import TEXTS, TRACEPARENT, Release, Traffic, cluster_releases, run

from helpers import built_tool, start_server


@pytest.fixture(scope="session")
def releases() -> dict[str, Release]:
    found = cluster_releases()
    assert set(found) == {"minio", "loki", "tempo", "promtail", "prometheus", "grafana"}, found
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
        time.sleep(1.5)  # exemplars are flushed to the shared directory every 0.5 s
        openmetrics = requests.get(
            f"{server.url}/metrics",
            timeout=30,
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        ).text
        yield Traffic(openmetrics, server.log_lines(), prediction["model_version"])
    finally:
        server.stop()


@pytest.fixture(scope="session")
def stored_series(traffic, promtool, tmp_path_factory) -> list[dict[str, str]]:
    """The label sets of the service's series as Prometheus 3 stores them after a scrape.

    The exposition goes through Prometheus' own OpenMetrics parser (promtool tsdb create-blocks-from), which
    normalises histogram `le` values, then the stored series are dumped.
    """
    directory = tmp_path_factory.mktemp("tsdb")
    stamp = int(time.time())
    lines = []
    for line in traffic.openmetrics.splitlines():
        if line and not line.startswith("#"):
            line = f"{line.split(' # ')[0]} {stamp}"  # the importer wants timestamps, and no exemplars
        lines.append(line)
    source = directory / "metrics.om"
    source.write_text("\n".join(lines) + "\n")
    blocks = directory / "blocks"
    created = run([promtool, "tsdb", "create-blocks-from", "openmetrics", source, blocks])
    assert created.returncode == 0, created.stderr
    (blocks / "wal").mkdir()
    dumped = run([promtool, "tsdb", "dump", "--format=seriesjson", blocks])
    assert dumped.returncode == 0, dumped.stderr
    return [json.loads(line) for line in dumped.stdout.splitlines() if line.startswith("{")]
