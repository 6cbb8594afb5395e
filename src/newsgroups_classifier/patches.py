"""What the service changes in BentoML and OpenTelemetry, each for a cost measured in the server.

Each patch replaces one method of a pinned dependency (bentoml 1.4, opentelemetry 1.x), keeps the
dependency's behaviour (tested against it), and must run before the worker builds its app: the
service module calls them at import. Patching twice changes nothing.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import groupby
from json.encoder import encode_basestring  # the line encoder's own string escaping
from timeit import default_timer
from typing import Any

import numpy as np

from .metrics import observe_many
from .telemetry import BufferedStdout, current_ids, line_head, worker_stdout

ACCESS_LOGGER = "bentoml.access"
CONTENT_TYPE, CONTENT_LENGTH = b"content-type", b"content-length"


def skip_asgi_send_receive_spans() -> None:
    """Make BentoML's ASGI middleware skip its `http receive` and `http send` spans.

    They are three of a request's ten spans, say nothing the server span does not, and cost about 6% of
    throughput. BentoML has no setting for the middleware's own `exclude_spans` option, so this sets its
    default; it must run before the worker builds its app (at import of the service module).
    """
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    _patch(OpenTelemetryMiddleware, "__init__", _skipping_send_receive)


def _skipping_send_receive(original: Callable) -> Callable:
    def init(self, app, *args, exclude_spans=None, **kwargs):
        original(self, app, *args, exclude_spans=exclude_spans or ["receive", "send"], **kwargs)

    return init


def cache_resource_hashes() -> None:
    """Compute each OpenTelemetry Resource's hash once, not per exported span.

    The OTLP encoder groups spans by resource, as dictionary keys, and `Resource.__hash__` serialises
    all the resource's attributes to JSON on every call: encoding a span without attributes took 12.3
    us, 7.5 with the hash cached. Resources are immutable, so the first hash is the hash.
    """
    from opentelemetry.sdk.resources import Resource

    _patch(Resource, "__hash__", _caching_hash)


def _caching_hash(original: Callable) -> Callable:
    def cached_hash(self) -> int:
        try:
            return self._cached_hash
        except AttributeError:
            self._cached_hash = original(self)
            return self._cached_hash

    return cached_hash


def _patch(cls: type, name: str, make: Callable[[Callable], Callable]) -> None:
    """Replace `cls.name` with `make(original)`; patching twice changes nothing."""
    original = getattr(cls, name)
    if getattr(original, "made_by", None) is make:
        return
    replacement = functools.wraps(original)(make(original))
    replacement.made_by = make
    setattr(cls, name, replacement)


def stream_access_log() -> None:
    """Make BentoML's access-log middleware note what an HTTP request's line needs and queue it on
    the worker's buffered stdout, where the line is made: the same line, written in bulk.

    Its own way cost a request about 0.9% of the worker's instructions: a second wrapper around
    `receive` (for websocket events), the line's strings built on the request path, then one INFO
    record through the logging module (a LogRecord, the logger's and the handler's calls and lock:
    40 us a request in the server). Websockets, and requests before the JSON logging is installed
    or when the logger does not log INFO, keep BentoML's way. Must run before the worker serves
    (at import of the service module).
    """
    from bentoml._internal.server.http.access import AccessLogMiddleware

    _patch(AccessLogMiddleware, "__call__", _queueing_access_lines)


def _queueing_access_lines(original: Callable) -> Callable:
    async def call(self, scope, receive, send) -> None:
        stdout = worker_stdout()
        if scope["type"] != "http" or stdout is None or not self.logger.isEnabledFor(logging.INFO):
            return await original(self, scope, receive, send)
        if scope["path"].startswith(tuple(self.skip_paths)):
            return await self.app(scope, receive, send)
        start = default_timer()
        response: tuple[int, tuple] = (0, ())  # status, and headers if the line shows any
        headers_shown = self.has_response_content_type or self.has_response_content_length

        async def logged_send(message) -> None:
            nonlocal response
            if message["type"] == "http.response.start":
                response = (message["status"], tuple(message["headers"]) if headers_shown else ())
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                latency_ms = max(default_timer() - start, 0) * 1000
                await send(message)
                stdout.put(_access_line, (time.time(), current_ids(), self, scope, response, latency_ms))
                return
            await send(message)

        await self.app(scope, receive, logged_send)

    return call


def access_message(middleware: Any, scope: dict, response: tuple[int, tuple], latency_ms: float) -> str:
    """The message of BentoML's access-log line for an HTTP request (as its middleware writes it),
    from the request's scope and the response's status and headers."""
    client = scope.get("client")
    request = [f"scheme={scope['scheme']}", f"method={scope.get('method', '')}", f"path={scope['path']}"]
    if middleware.has_request_content_type:
        request.append(f"type={_header(scope['headers'], CONTENT_TYPE)}")
    if middleware.has_request_content_length:
        request.append(f"length={_header(scope['headers'], CONTENT_LENGTH)}")
    status, headers = response
    answer = [f"status={status}"]
    if middleware.has_response_content_type:
        answer.append(f"type={_header(headers, CONTENT_TYPE)}")
    if middleware.has_response_content_length:
        answer.append(f"length={_header(headers, CONTENT_LENGTH)}")
    address = f"{client[0]}:{client[1]}" if client else "_"
    return f"{address} ({','.join(request)}) ({','.join(answer)}) {latency_ms:.3f}ms"


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str:
    found = b""
    for key, value in headers:
        if key == name:
            found = value  # the last one, as BentoML's middleware takes
    return found.decode()


def _access_line(item: tuple) -> str:
    created, ids, middleware, scope, response, latency_ms = item
    message = access_message(middleware, scope, response, latency_ms)
    return f'{line_head(created, "info", ACCESS_LOGGER, ids)},"message":{encode_basestring(message)}}}\n'


def note_request_metrics() -> None:
    """Make BentoML's request-metrics middleware note each HTTP request (its path, status and
    duration) and leave its metrics to the worker's stdout writer, which observes every request
    noted since its last write at once: the same metrics, at most one write interval late.

    Its own way made six metric calls a request (the last-request time, in-progress up and down,
    the count, the duration), each through prometheus_client's checks and a write to the
    multiprocess file, after four `labels(**values)` lookups (17 000 instructions each: the label
    names and values are checked and converted on every call). Websockets, and requests before the
    JSON logging is installed, keep BentoML's way. Must run before the worker serves (at import of
    the service module).
    """
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    _patch(RunnerTrafficMetricsMiddleware, "__call__", _noting_requests)


def _noting_requests(original: Callable) -> Callable:
    async def call(self, scope, receive, send) -> None:
        stdout = worker_stdout()
        if scope["type"] != "http" or stdout is None or not self._is_setup:
            return await original(self, scope, receive, send)
        path = scope["path"]
        if path == "/metrics":
            return await self.app(scope, receive, send)
        notes = self.__dict__.get("request_notes") or RequestNotes.attach(self, stdout)
        notes.started(path)
        start, status = default_timer(), 0

        async def noting_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                notes.done.append((path, status, max(default_timer() - start, 0)))
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            notes.in_progress[path] -= 1

    return call


class RequestNotes:
    """What BentoML's request-metrics middleware noted since the last write, and `write`, which
    turns it into the middleware's metrics. Noted on the event loop, written by the stdout writer."""

    def __init__(self, middleware: Any):
        self._middleware = middleware
        self._skip = tuple(middleware.skip_paths)
        self.done: deque[tuple[str, int, float]] = deque()  # path, status, seconds
        self.in_progress: dict[str, int] = {}
        self.last_request = 0.0
        self._written: dict[str, int] = {}  # in-progress counts as last written
        self._last_written = 0.0

    @classmethod
    def attach(cls, middleware: Any, stdout: BufferedStdout) -> RequestNotes:
        notes = middleware.request_notes = cls(middleware)
        stdout.on_every_write(notes.write)
        return notes

    def started(self, path: str) -> None:
        self.in_progress[path] = self.in_progress.get(path, 0) + 1
        if not path.startswith(self._skip):
            self.last_request = time.time()

    def write(self) -> None:
        from bentoml._internal.context import server_context

        m = self._middleware
        service = {
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }
        done = [self.done.popleft() for _ in range(len(self.done))]
        done.sort(key=lambda request: request[:2])
        for (path, status), group in groupby(done, key=lambda request: request[:2]):
            seconds = np.array([request[2] for request in group])
            labels = {"endpoint": path, **service, "http_response_code": status}
            m.metrics_request_total.labels(**labels).inc(len(seconds))
            observe_many(m.metrics_request_duration.labels(**labels), seconds)
        for path, count in list(self.in_progress.items()):
            if self._written.get(path) != count:
                m.metrics_request_in_progress.labels(endpoint=path, **service).set(count)
                self._written[path] = count
        if self.last_request != self._last_written:
            self._last_written = self.last_request
            m.metrics_last_request_timestamp.labels(**service).set(self._last_written)
