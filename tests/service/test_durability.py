"""What a response acknowledged survives a killed worker; a blocked stdout never holds up a prediction."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from support.processes import poll_until
from support.service_process import scrape, start_server, value

TEXT = "The goalie stopped every shot in overtime of the playoff game"


def worker_pids(server) -> set[int]:
    return {
        child.pid
        for child in psutil.Process(server.process.pid).children(recursive=True)
        if "_bentoml_impl.worker" in " ".join(child.cmdline())
    }


def test_sigkill_right_after_the_responses_loses_no_count_and_no_feedback(models_home, tmp_path):
    server = start_server(models_home, tmp_path, sample_rate=0.0)
    try:
        before = scrape(server.url)
        predictions = [
            requests.post(f"{server.url}/predict", json={"text": f"{TEXT} {i}"}, timeout=10).json()
            for i in range(10)
        ]
        for prediction in predictions[:3]:
            feedback = {"prediction_id": prediction["prediction_id"], "label": "rec.sport.hockey"}
            assert requests.post(f"{server.url}/feedback", json=feedback, timeout=10).status_code == 200
        (worker,) = worker_pids(server)
        os.kill(worker, signal.SIGKILL)  # no shutdown hook, no flush
        poll_until(lambda: worker_pids(server) - {worker}, timeout=60, what="BentoML to start a new worker")
        poll_until(lambda: requests.get(f"{server.url}/readyz", timeout=2).ok, timeout=60, what="readiness")
        after = scrape(server.url)
        for name, moved in (("newsgroups_predictions_total", 10), ("newsgroups_feedback_total", 3)):
            assert value(after, name) - value(before, name) == moved, name
        logged = {
            json.loads(line)["prediction_id"] for line in server.log_lines() if '"event":"feedback"' in line
        }
        assert logged == {p["prediction_id"] for p in predictions[:3]}
    finally:
        server.stop()


class PausableReader:
    """Reads a FIFO (the service's stdout) line by line until paused; then nobody reads it."""

    def __init__(self, fifo: Path):
        self.lines: list[str] = []
        self.reading = threading.Event()
        self.reading.set()
        self._fifo = fifo
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with open(self._fifo, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                self.lines.append(line)
                self.reading.wait()


@pytest.fixture
def blocked_stdout_service(models_home, tmp_path):
    fifo = tmp_path / "stdout.fifo"
    os.mkfifo(fifo)
    reader = PausableReader(fifo)
    # The shell points the service's stdout at the FIFO, then becomes the service.
    server = start_server(
        models_home, tmp_path, sample_rate=0.0, wrapper=["sh", "-c", f'exec "$@" >{fifo} 2>&1', "sh"]
    )
    yield server, reader
    reader.reading.set()
    server.stop()


def test_a_blocked_stdout_holds_up_no_prediction_and_fails_feedback_in_time(blocked_stdout_service):
    server, reader = blocked_stdout_service
    prediction = requests.post(f"{server.url}/predict", json={"text": TEXT}, timeout=10).json()
    poll_until(lambda: any('"event":"prediction"' in line for line in reader.lines), what="a first line")
    reader.reading.clear()  # from now on the pipe fills up, then the log queue, then lines are dropped
    dropped = "newsgroups_log_lines_dropped_total"
    before = value(scrape(server.url), dropped)
    texts = [f"{TEXT} {i}" for i in range(64)]
    for _ in range(200):  # 65 lines each (64 events, the access log): more than the queue holds
        response = requests.post(f"{server.url}/predict_batch", json={"texts": texts}, timeout=10)
        assert response.status_code == 200, response.text
    assert value(scrape(server.url), dropped) > before
    # Feedback is only acknowledged once written: with stdout blocked it is refused in bounded time.
    feedback = {"prediction_id": prediction["prediction_id"], "label": "rec.sport.hockey"}
    started = time.monotonic()
    refused = requests.post(f"{server.url}/feedback", json=feedback, timeout=30)
    assert refused.status_code == 503 and refused.json()["reason"] == "unavailable", refused.text
    assert time.monotonic() - started < 15
    assert requests.post(f"{server.url}/predict", json={"text": TEXT}, timeout=10).status_code == 200
    reader.reading.set()
    # Nothing was kept of the refused feedback: once stdout drains, the same feedback is recorded.
    accepted = poll_until(
        lambda: (
            (r := requests.post(f"{server.url}/feedback", json=feedback, timeout=30)).status_code == 200 and r
        ),
        timeout=60,
        what="feedback to be accepted once stdout drains",
    )
    assert accepted.json()["status"] == "recorded"
    poll_until(lambda: any('"event":"feedback"' in line for line in reader.lines), what="the feedback line")
    # Whatever was written came out whole.
    assert all(json.loads(line) for line in reader.lines if line.startswith("{"))
