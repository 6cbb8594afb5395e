"""Services with real OTLP receivers, for the trace and log tests."""

from __future__ import annotations

import pytest

from support.otlp_receiver import OtlpReceiver
from support.service_process import start_server


@pytest.fixture(scope="module")
def receiver():
    otlp = OtlpReceiver().start()
    yield otlp
    otlp.stop()


@pytest.fixture(scope="module")
def grpc_service(models_home, receiver, tmp_path_factory):
    """Traces over OTLP gRPC, every request sampled, input text logged as a hash."""
    server = start_server(
        models_home,
        tmp_path_factory.mktemp("grpc"),
        receiver.grpc_endpoint,
        "grpc",
        1.0,
        env={"LOG_TEXT": "hash", "POD_NAME": "classifier-0", "POD_NAMESPACE": "newsgroups"},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http_service(models_home, receiver, tmp_path_factory):
    """Traces over OTLP HTTP, 1 in 1000 sampled (parent-based), the first 12 characters of the text logged."""
    server = start_server(
        models_home,
        tmp_path_factory.mktemp("http"),
        receiver.http_endpoint,
        "http/protobuf",
        0.001,
        env={"LOG_TEXT": "prefix", "LOG_TEXT_CHARS": "12"},
    )
    yield server
    server.stop()
