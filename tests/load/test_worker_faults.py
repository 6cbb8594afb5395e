"""Faults of the worker: killed while stdout is blocked, killed mid-burst.

A stdout nobody reads never stops serving, a worker started while it is blocked included (what cannot
be written is dropped and counted), and a killed worker's requests do not stay counted in progress.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

from support.processes import poll_until
from support.service_process import scrape, start_server, value

TEXT = "The goalie stopped every shot in overtime of the playoff game"
IN_PROGRESS = "newsgroups_http_requests_in_progress"
DROPPED = "newsgroups_log_lines_dropped_total"


def worker_pids(server) -> set[int]:
    return {
        child.pid
        for child in psutil.Process(server.process.pid).children(recursive=True)
        if "_bentoml_impl.worker" in " ".join(child.cmdline())
    }


def predicts(server) -> bool:
    return requests.post(f"{server.url}/predict", json={"text": TEXT}, timeout=5).status_code == 200


def test_a_worker_started_while_stdout_is_blocked_serves(models_home, tmp_path):
    fifo = tmp_path / "stdout.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read until the end
    server = start_server(
        models_home, tmp_path, sample_rate=0.0, wrapper=["sh", "-c", f'exec "$@" >{fifo} 2>&1', "sh"]
    )
    try:
        burst_dropping_lines(server)
        (worker,) = worker_pids(server)
        os.kill(worker, signal.SIGKILL)
        poll_until(lambda: worker_pids(server) - {worker}, timeout=60, what="BentoML to start a new worker")
        poll_until(
            lambda: predicts(server), timeout=60, what="/predict from the worker started on a blocked stdout"
        )
        burst_dropping_lines(server)  # the new worker too
        written = drain(reader)
    finally:
        server.stop()
        os.close(reader)
    # What was written came out whole: one JSON object a line.
    lines = written.decode("utf-8", "replace").splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)


def burst_dropping_lines(server) -> None:
    """Requests answered while stdout is blocked, their lines dropped and counted."""
    dropped = value(scrape(server.url), DROPPED)
    texts = [f"{TEXT} {i}" for i in range(64)]
    for _ in range(200):  # 64 lines each: the pipe fills, then the log queue, then lines are dropped
        response = requests.post(f"{server.url}/predict_batch", json={"texts": texts}, timeout=10)
        assert response.status_code == 200, response.text
    assert value(scrape(server.url), DROPPED) > dropped


def drain(fd: int) -> bytes:
    """What the pipe holds now, and what the service writes while it is read, until it writes no more."""
    chunks = []
    os.set_blocking(fd, True)
    done = threading.Event()

    def read() -> None:
        while not done.is_set() and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    sizes = []

    def quiet() -> bool:  # nothing new for a while: the writers' queues are empty
        sizes.append(sum(map(len, chunks)))
        return len(sizes) > 5 and sizes[-1] == sizes[-6]

    poll_until(quiet, timeout=60, what="the service's queued lines to be written")
    done.set()
    complete = b"".join(chunks)
    return complete[: complete.rfind(b"\n") + 1]  # whole lines


def test_a_killed_workers_requests_are_no_longer_in_progress(models_home, tmp_path):
    server = start_server(models_home, tmp_path, sample_rate=0.0)
    stop = threading.Event()
    failed = []
    texts = [TEXT * 20] * 64

    def client() -> None:
        while not stop.is_set():
            try:
                requests.post(f"{server.url}/predict_batch", json={"texts": texts}, timeout=30)
            except requests.RequestException:
                failed.append(1)  # in flight when its worker was killed

    def in_progress(route: str = "/predict_batch") -> float:
        return value(scrape(server.url), IN_PROGRESS, route=route)

    try:
        with ThreadPoolExecutor(8) as pool:
            for _ in range(8):
                pool.submit(client)
            poll_until(lambda: in_progress() >= 2, timeout=30, what="requests in progress")
            (worker,) = worker_pids(server)
            os.kill(worker, signal.SIGKILL)
            poll_until(lambda: failed, timeout=30, what="a request in flight to fail")
            stop.set()
        poll_until(lambda: predicts(server), timeout=60, what="the new worker")
        samples = scrape(server.url)
        counted = {dict(labels)["route"]: v for (name, labels), v in samples.items() if name == IN_PROGRESS}
        assert counted.pop("/metrics") == 1  # this scrape
        assert set(counted.values()) == {0}, counted
        # Every line printed, from the first byte, the new worker's start-up lines included, is JSON.
        lines = server.log_lines()
        assert all(isinstance(json.loads(line), dict) for line in lines)
        assert sum("Service newsgroups-classifier initialized" in line for line in lines) == 2
    finally:
        stop.set()
        server.stop()
