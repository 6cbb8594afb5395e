"""BentoML's access-log and request-metrics middlewares as the service patches them, against BentoML's
own, in this process: the same lines and the same metrics, for the same requests."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import prometheus_client
import pytest
from bentoml._internal.server.http import access, instruments
from prometheus_client import CollectorRegistry

from newsgroups_classifier import patches, telemetry
from newsgroups_classifier.telemetry import BufferedStdout

patches.stream_access_log()  # as the service module does at import
patches.note_request_metrics()
BENTOML_ACCESS = access.AccessLogMiddleware.__call__.__wrapped__
BENTOML_METRICS = instruments.RunnerTrafficMetricsMiddleware.__call__.__wrapped__
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, float("inf"))
JSON = [(b"content-type", b"application/json"), (b"content-length", b"17")]
# path, status, seconds the app takes, body chunks, request headers, client
REQUESTS = [
    ("/predict", 200, 0.00325, 1, JSON, ("127.0.0.1", 40000)),
    ("/predict", 200, 0.0125, 1, JSON, ("10.1.2.3", 5)),
    ("/predict", 400, 0.0007, 1, [(b"content-type", b"text/plain"), (b"content-type", b"x/y")], None),
    ("/predict_batch", 200, 0.75, 3, JSON, ("::1", 1)),
    ("/healthz", 200, 0.0001, 1, [], ("127.0.0.1", 2)),  # skipped by the access log, counted
    ("/feedback", 422, 3.0, 1, JSON, ("127.0.0.1", 3)),
    ("/metrics", 200, 0.02, 1, [], ("127.0.0.1", 4)),  # neither logged nor counted
]


START = 1_764_000_000.0


class Clock:
    """default_timer and time.time for both middlewares: time moves only when the app works."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    for module in (patches, access, instruments):
        monkeypatch.setattr(module, "default_timer", clock)
    monkeypatch.setattr(time, "time", clock)
    return clock


@pytest.fixture
def stdout(tmp_path, monkeypatch) -> BufferedStdout:
    stdout = BufferedStdout(tmp_path / "lock", interval=3600)
    monkeypatch.setattr(telemetry, "_worker_stdout", stdout)
    return stdout


def app_for(clock: Clock, status: int, seconds: float, chunks: int):
    async def app(scope, receive, send) -> None:
        await receive()
        clock.now += seconds
        headers = [(b"content-type", b"application/json"), (b"content-length", str(chunks).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for chunk in range(chunks):
            await send({"type": "http.response.body", "body": b"x", "more_body": chunk < chunks - 1})

    return app


def serve(call, middleware, clock: Clock, request: tuple) -> None:
    path, status, seconds, chunks, headers, client = request
    scope = {"type": "http", "scheme": "http", "method": "POST", "path": path, "headers": headers}
    if client:
        scope["client"] = client
    middleware.app = app_for(clock, status, seconds, chunks)

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    asyncio.run(call(middleware, scope, receive, discard))


async def discard(message) -> None:
    """The server's side of `send`: the tests read what the middlewares log and count, not this."""


class Messages(list):
    """A logger for BentoML's own middleware: keeps each INFO message."""

    def info(self, msg: str, *args: object) -> None:
        self.append(msg % args)


@pytest.mark.parametrize("shown", [False, True], ids=["plain", "content-type-and-length"])
def test_access_lines_carry_bentomls_own_messages(clock, stdout, capfd, shown):
    def middleware():
        return access.AccessLogMiddleware(
            None, shown, shown, shown, shown, skip_paths=["/metrics", "/healthz", "/livez", "/readyz"]
        )

    theirs, ours = middleware(), middleware()
    theirs.logger = Messages()
    ours.logger = logging.getLogger("test.access")
    ours.logger.setLevel(logging.INFO)
    for request in REQUESTS:
        serve(BENTOML_ACCESS, theirs, clock, request)
        serve(type(ours).__call__, ours, clock, request)
    assert capfd.readouterr().out == ""  # queued, not written
    stdout.flush()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert {(line["logger"], line["level"]) for line in lines} == {("bentoml.access", "info")}
    assert [line["message"] for line in lines] == theirs.logger
    assert len(lines) == len(REQUESTS) - 2
    ours.logger.setLevel(logging.WARNING)  # the logger's level still rules
    serve(type(ours).__call__, ours, clock, REQUESTS[0])
    stdout.flush()
    assert capfd.readouterr().out == ""


class Client:
    """BentoML's metrics client, on a registry of the test's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def __getattr__(self, kind: str):
        return lambda **options: getattr(prometheus_client, kind)(registry=self.registry, **options)


def metrics_middleware() -> tuple[instruments.RunnerTrafficMetricsMiddleware, CollectorRegistry]:
    middleware = instruments.RunnerTrafficMetricsMiddleware(None, namespace="bentoml_service")
    client = Client()
    middleware._setup(metrics_client=client, duration_buckets=BUCKETS)
    return middleware, client.registry


def samples(registry: CollectorRegistry) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")  # when a child was made, not what it counts
    }


def test_request_metrics_are_bentomls_own_once_written(clock, stdout):
    (theirs, their_registry), (ours, our_registry) = metrics_middleware(), metrics_middleware()
    for call, middleware in ((BENTOML_METRICS, theirs), (type(ours).__call__, ours)):
        clock.now = START  # the same times for both
        for request in REQUESTS:
            serve(call, middleware, clock, request)
    expected = samples(their_registry)
    predicted = [
        value
        for (name, labels), value in expected.items()
        if name == "bentoml_service_request_total"
        and {("endpoint", "/predict"), ("http_response_code", "200")} <= set(labels)
    ]
    assert predicted == [2]
    assert samples(our_registry) != expected  # noted, not yet written
    stdout.flush()
    assert samples(our_registry) == expected
    stdout.flush()  # a write with nothing noted changes nothing
    assert samples(our_registry) == expected


def test_requests_in_progress_are_written_as_they_stand(clock, stdout):
    middleware, registry = metrics_middleware()
    in_progress = ("bentoml_service_request_in_progress", ("endpoint", "/predict"))
    seen = []

    async def app(scope, receive, send) -> None:
        stdout.flush()  # a write while the request is in flight
        seen.append({k: v for k, v in samples(registry).items() if k[0] == in_progress[0]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = {"type": "http", "scheme": "http", "method": "POST", "path": "/predict", "headers": []}
    middleware.app = app
    asyncio.run(middleware(scope, None, discard))
    stdout.flush()
    after = samples(registry)
    (during,) = seen
    assert [value for key, value in during.items() if ("endpoint", "/predict") in key[1]] == [1]
    assert [value for key, value in after.items() if key[0] == in_progress[0]] == [0]
