"""SIGTERM during load: requests in flight complete and the service exits cleanly within its grace period."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from support.load_driver import Load, Request, describe, predictions_of
from support.paths import REPO
from support.processes import poll_until
from support.service_process import start_server
from support.workload import process_tree

DEPLOYMENT = REPO / "manifests" / "deployment.yaml"
KUBERNETES_DEFAULT_GRACE = 30  # seconds, when the pod spec sets none
CLIENTS = 16


def grace_period(deployment: Path = DEPLOYMENT) -> float:
    """terminationGracePeriodSeconds of the shipped Deployment: what Kubernetes waits before SIGKILL."""
    for document in yaml.safe_load_all(deployment.read_text()):
        if document and document.get("kind") == "Deployment":
            pod = document["spec"]["template"]["spec"]
            return float(pod.get("terminationGracePeriodSeconds", KUBERNETES_DEFAULT_GRACE))
    raise AssertionError(f"no Deployment in {deployment}")


def slow_requests(texts: list[str], client: int) -> Iterator[Request]:
    """Large batches from half the clients and single predictions from the others, so that many
    requests are queued in the worker at any moment."""
    for sent in itertools.count(client * 64):
        if client % 2:
            batch = [texts[(sent + i) % len(texts)] for i in range(64)]
            yield Request("batch of 64", "/predict_batch", {"json": {"texts": batch}})
        else:
            yield Request("predict", "/predict", {"json": {"text": texts[sent % len(texts)]}})


def test_sigterm_lets_requests_in_flight_finish(models_home, docs, tmp_path):
    grace = grace_period()
    server = start_server(models_home, tmp_path, sample_rate=0.0)
    processes = process_tree(server.process.pid)
    try:
        with Load(server.url, CLIENTS, lambda client: slow_requests(docs.texts, client)) as load:
            poll_until(lambda: load.completed() >= 2 * CLIENTS, timeout=60, what="the load to be under way")
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            try:
                code = server.process.wait(grace)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"the service was still running {grace:g} s after SIGTERM: Kubernetes would kill it"
                )
            exited = time.monotonic()
    finally:
        server.stop()  # only if something above failed: the process is gone otherwise
    outcomes = load.snapshot()

    in_flight = [outcome for outcome in outcomes if outcome.started < signalled <= outcome.finished]
    assert len(in_flight) >= CLIENTS // 2, f"only {len(in_flight)} requests were in flight at SIGTERM"
    cut = [outcome for outcome in in_flight if not outcome.ok]
    assert not cut, f"{len(cut)} of {len(in_flight)} requests in flight at SIGTERM failed:\n{describe(cut)}"
    assert code == 0, f"exit status {code} after SIGTERM"
    left = [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes of the service still running after it exited: {left}"
    # Prediction events are queued for a writer thread: the worker writes what is queued before it exits.
    answered = {p["prediction_id"] for outcome in outcomes if outcome.ok for p in predictions_of(outcome)}
    events = [json.loads(line) for line in server.log_lines() if line.startswith('{"')]
    logged = {event["prediction_id"] for event in events if event.get("event") == "prediction"}
    missing = answered - logged
    assert not missing, f"{len(missing)} of {len(answered)} answered predictions have no event in the log"
    print(
        f"{len(in_flight)} requests in flight at SIGTERM, all answered 200; "
        f"exit status 0 after {exited - signalled:.1f} s (grace period {grace:g} s); "
        f"all {len(answered)} answered predictions logged"
    )
