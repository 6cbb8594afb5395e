"""A slowloris: a few hundred connections that send nothing, their headers or their body a byte at a
time, or that stay idle after a response, while /predict is timed.

Slow bodies get a 408 within BODY_TIMEOUT_SECONDS and are closed, idle connections are closed after
uvicorn's keep-alive timeout, and /predict keeps its normal latency. A connection whose headers never
end is not a request yet, and the service cannot answer it (uvicorn has no header timeout): it stays
open, costing little, until an ingress's header timeout closes it (docs/testing.md).
"""

from __future__ import annotations

import select
import socket
import statistics
import threading
import time

import requests

from newsgroups_classifier.local_config import shipped_service_env
from support.raw_http import connect, is_closed, read_reply
from support.service_process import start_server

BODY_TIMEOUT_SECONDS = float(shipped_service_env()["BODY_TIMEOUT_SECONDS"])
KEEP_ALIVE_SECONDS = 5  # uvicorn's timeout_keep_alive, which BentoML keeps
CONNECTIONS = 100  # of each kind
SLO_SECONDS = 0.25  # the latency objective's threshold (a bucket edge of newsgroups_http_request_duration)
TEXT = "The pitcher threw a curveball and the batter hit a home run"


def predict_latencies(url: str, count: int = 30) -> list[float]:
    latencies = []
    with requests.Session() as session:
        for _ in range(count):
            started = time.monotonic()
            assert session.post(f"{url}/predict", json={"text": TEXT}, timeout=10).status_code == 200
            latencies.append(time.monotonic() - started)
    return latencies


def open_connections(port: int, first_bytes: bytes) -> list[socket.socket]:
    connections = [connect(port, timeout=10) for _ in range(CONNECTIONS)]
    for sock in connections:
        if first_bytes:
            sock.sendall(first_bytes)
    return connections


def test_slow_and_idle_connections_leave_predict_its_latency(models_home, tmp_path):
    server = start_server(models_home, tmp_path, sample_rate=0.0)
    try:
        predict_latencies(server.url, 10)  # warm
        before = predict_latencies(server.url)
        started = time.monotonic()
        never_sent = open_connections(server.port, b"")
        slow_headers = open_connections(server.port, b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        slow_bodies = open_connections(
            server.port,
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 9999\r\n\r\n",
        )
        idle = open_connections(server.port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in idle:
            assert read_reply(sock, started, b"GET").status == 200  # then nothing more is sent

        replies: dict[socket.socket, object] = {}
        trickler = threading.Thread(target=trickle, args=(slow_headers, slow_bodies, replies, started))
        trickler.start()
        during = []
        while trickler.is_alive():  # until every slow body has its answer
            during += predict_latencies(server.url, 5)

        # Each slow body: a 408 with its reason, within the body timeout, and the connection closed.
        assert len(replies) == CONNECTIONS
        for sock, reply in replies.items():
            assert (reply.status, reply.json()["reason"]) == (408, "body_timeout"), reply
            assert BODY_TIMEOUT_SECONDS <= reply.seconds < BODY_TIMEOUT_SECONDS + 5, reply.seconds
            assert is_closed(sock, timeout=5)
        assert all(is_closed(sock, timeout=5) for sock in idle)  # after the keep-alive timeout
        assert time.monotonic() - started > KEEP_ALIVE_SECONDS
        # Not requests yet: still open (an ingress's header timeout closes them).
        assert not any(is_closed(sock, timeout=0.01) for sock in never_sent + slow_headers)

        p50_before, p50_during = statistics.median(before), statistics.median(during)
        print(
            f"/predict p50 {p50_before * 1000:.1f} ms alone, {p50_during * 1000:.1f} ms during the slowloris"
        )
        print(f"({len(during)} requests during it)")
        assert p50_during < 2 * p50_before + 0.02
        assert sorted(during)[int(0.99 * len(during))] < SLO_SECONDS
    finally:
        for sock in never_sent + slow_headers + slow_bodies + idle:
            sock.close()
        server.stop()


def trickle(slow_headers: list, slow_bodies: list, replies: dict, started: float) -> None:
    """A byte a second on each slow connection (the attack's pace), until every slow body has its answer
    (read as it comes) or long after it should have."""
    deadline = started + BODY_TIMEOUT_SECONDS + 10
    while len(replies) < len(slow_bodies) and time.monotonic() < deadline:
        answered, _, _ = select.select([s for s in slow_bodies if s not in replies], [], [], 0)
        for sock in answered:
            replies[sock] = read_reply(sock, started)
        for sock in slow_headers + [s for s in slow_bodies if s not in replies]:
            sock.send(b"X-Slow: 1\r\n" if sock in slow_headers else b"a")
        time.sleep(1 - (time.monotonic() - started) % 1)
