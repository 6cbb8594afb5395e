"""Telemetry backends down: predictions keep succeeding, and the exporter's complaints are rate-limited."""

from __future__ import annotations

import socket
import statistics
import threading
import time

import pytest
import requests

from newsgroups_classifier.config import SHUTDOWN_FLUSH_SECONDS
from newsgroups_classifier.local_config import shipped_service_env
from support.processes import free_port, poll_until
from support.service_process import start_server

TEXT = "Which tires are best for a sports car in the rain"
EXPORT_TIMEOUT = float(shipped_service_env()["OTEL_EXPORTER_OTLP_TIMEOUT"])  # seconds, as the SDK reads it


class HangingEndpoint:
    """Accepts connections and never answers: the worst kind of collector outage."""

    def __init__(self) -> None:
        self.port = free_port()
        self._socket = socket.create_server(("127.0.0.1", self.port))
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self._connections.append(connection)

    def close(self) -> None:
        self._socket.close()
        for connection in self._connections:
            connection.close()


def latencies(url: str, count: int) -> list[float]:
    results = []
    for i in range(count):
        started = time.perf_counter()
        response = requests.post(f"{url}/predict", json={"text": f"{TEXT} {i}"}, timeout=30)
        results.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return results


@pytest.fixture(scope="module")
def hanging():
    endpoint = HangingEndpoint()
    yield endpoint
    endpoint.close()


@pytest.mark.parametrize("outage", ["refused-grpc", "refused-http", "hanging-grpc", "hanging-http"])
def test_predictions_succeed_while_the_collector_is_down(outage, models_home, hanging, tmp_path):
    kind, transport = outage.split("-")
    port = free_port() if kind == "refused" else hanging.port  # nothing listens on a fresh free port
    protocol = {"grpc": "grpc", "http": "http/protobuf"}[transport]
    server = start_server(models_home, tmp_path, f"http://127.0.0.1:{port}", protocol, 1.0)
    try:
        took = latencies(server.url, 150)
        # No request waits for the exporter: each would take the export timeout if one did.
        assert max(took) < EXPORT_TIMEOUT / 2, f"slowest request {max(took):.2f} s"
        print(f"{outage}: median {statistics.median(took) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms")

        def exporter_complaints() -> list[str]:
            latencies(server.url, 5)  # keep the exporter failing
            return [line for line in server.log_lines() if '"logger":"opentelemetry' in line]

        complaints = poll_until(exporter_complaints, timeout=4 * EXPORT_TIMEOUT, what="an exporter complaint")
        print(f"{outage}: {len(complaints)} exporter complaints logged")
        assert 1 <= len(complaints) <= 6, "\n".join(complaints)  # visible, but one per logger per minute
        # Shutdown tries to export the pending spans, for a bounded time only.
        signalled = time.monotonic()
        assert server.stop(timeout=30) == 0
        took = time.monotonic() - signalled
        assert took < SHUTDOWN_FLUSH_SECONDS + 5, f"shutdown took {took:.1f} s with the collector down"
        print(f"{outage}: shutdown in {took:.1f} s")
    finally:
        server.stop()
