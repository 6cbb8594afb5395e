"""The service's HTTP edge: an ASGI middleware in front of BentoML's routes.

Every request gets its success response or a JSON error `{"error": "...", "reason": "..."}`: unknown
paths a 404, other methods a 405, a WebSocket handshake a 404 (no API takes one), bodies not sent within
BODY_TIMEOUT_SECONDS a 408, bad input its 4xx (guard.py), and whatever error BentoML answers is given
that shape too. The edge records each request once, under a fixed set of route labels: its metrics,
one `request` event if no prediction or feedback event stands for it (probes and /metrics aside), and
for the API a server span. (BentoML's own request metrics, access log and server spans are switched off
in its configuration: it labels them with the raw path, with which a client could add series without
bound.) No log line carries the raw path or anything else a client wrote. The edge also serves /metrics
and the OpenAPI schema (/docs.json) with the error responses added.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from http import HTTPStatus

from opentelemetry import trace

from . import api_schema, metrics
from .config import Settings
from .guard import Rejection, batch_body, feedback_body, media_type, predict_body
from .tracing import server_span, set_status_code

REQUESTS_LOGGER = "newsgroups_classifier.requests"
JSON_TYPE = b"application/json"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")  # others are counted as OTHER
requests_log = logging.getLogger(REQUESTS_LOGGER)
Check = Callable[[bytes, str, str, int], dict]


@dataclass(frozen=True)
class Route:
    label: str  # in metrics and logs
    methods: tuple[str, ...]
    check: Check | None = None  # an API route's input check
    endpoint: str = "other"  # the rejection counter's label
    logged: bool = True  # probes and /metrics: no request event


ROUTES = {
    route.label: route
    for route in (
        Route("/predict", ("POST",), predict_body, "predict"),
        Route("/predict_batch", ("POST",), batch_body, "predict_batch"),
        Route("/feedback", ("POST",), feedback_body, "feedback"),
        Route("/livez", ("GET", "HEAD"), logged=False),
        Route("/readyz", ("GET", "HEAD"), logged=False),
        Route("/healthz", ("GET", "HEAD"), logged=False),
        Route("/metrics", ("GET", "HEAD"), logged=False),
        Route("/docs.json", ("GET",)),
        Route("/schema.json", ("GET",)),
        Route("/", ("GET",)),  # BentoML's Swagger UI, with its files under /static_content/
    )
}
STATIC = Route("/static_content", ("GET", "HEAD"))
UNMATCHED = Route("unmatched", ())
# The ASGI extension by which a server lets the application refuse a WebSocket handshake with an HTTP
# response of its own (uvicorn has it).
WEBSOCKET_DENIAL = "websocket.http.response"
# The reason of an error BentoML answered (its body has none).
REASONS = {400: "invalid_request", 404: "not_found", 500: "internal_error", 503: "overloaded"}


def route_of(path: str) -> Route:
    if path.startswith(STATIC.label + "/"):
        return STATIC
    return ROUTES.get(path, UNMATCHED)


def error_body(message: str, reason: str) -> bytes:
    return json.dumps({"error": message, "reason": reason}).encode()


@dataclass
class Exchange:
    """One request as the edge sees it: where it goes and what was answered."""

    route: Route
    method: str
    started: float
    status: int = 0
    reason: str = ""
    body_read: bool = False


class HttpEdge:
    def __init__(self, app, settings: Settings, labels: Callable[[], list[str]]):
        self.app = app
        self.settings = settings
        # The model's (feedback names one), asked for when the schema is first made: the worker has loaded
        # the model by then, which the image does not hold (the pod fetches it).
        self.labels = labels
        self.tracer = trace.get_tracer(__name__)
        self.api_schema: bytes | None = None  # made from BentoML's at the first GET /docs.json

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket" and WEBSOCKET_DENIAL in scope.get("extensions", {}):
            # No API takes a WebSocket: the handshake (a GET) is refused with our error, not an empty 403
            scope, send = {**scope, "method": "GET"}, _denying(send)
        elif scope["type"] != "http":
            return await self.app(scope, receive, send)
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        exchange = Exchange(route_of(scope["path"]), method, time.perf_counter())
        recorded = self.settings.telemetry_on
        with self._span(exchange, scope["headers"]) as span:
            if recorded:
                metrics.http_in_progress(exchange.route.label).inc()
            try:
                await self._answer(exchange, scope, receive, self._recording(exchange, send))
            except asyncio.CancelledError:  # BentoML's traffic timeout answered it (504)
                exchange.status = exchange.status or 504
                raise
            except HandshakeClosed:  # nothing more can be sent, and nothing went wrong here
                pass
            except Exception:  # a bug of ours: still a JSON answer, and its traceback in the log
                requests_log.exception("request failed in the HTTP edge")
                if not exchange.status:
                    exchange.reason = "internal_error"
                    await self._respond(exchange, send, 500, "internal error", "internal_error")
            finally:
                if span is not None:
                    set_status_code(span, exchange.status or 500)
                if recorded:
                    self._record(exchange)

    def _span(self, exchange: Exchange, headers: list):
        """A server span for the API's requests (telemetry on): the rest are not traced."""
        api = exchange.route.check is not None and exchange.method in exchange.route.methods
        if self.settings.telemetry_on and api:
            return server_span(self.tracer, exchange.method, exchange.route.label, headers)
        return nullcontext()

    async def _answer(self, exchange: Exchange, scope, receive, send) -> None:
        route = exchange.route
        if scope["type"] == "websocket":
            return await self._reject(
                exchange, send, Rejection(404, "not_found", "no WebSocket endpoint here")
            )
        if route is UNMATCHED:
            return await self._reject(exchange, send, Rejection(404, "not_found", "no such path"))
        if exchange.method not in route.methods:
            message = f"{route.label} takes {', '.join(route.methods)}"
            allow = ", ".join(route.methods).encode()
            rejection = Rejection(405, "method_not_allowed", message)
            return await self._reject(exchange, send, rejection, [(b"allow", allow)])
        if route.label == "/metrics":
            metrics.forget_dead_workers()
            body, content_type = metrics.exposition()
            return await self._send(send, 200, body, content_type.encode(), head=exchange.method == "HEAD")
        if route.label == "/docs.json":
            return await self._send(send, 200, await self._api_schema(scope, receive), JSON_TYPE)
        if route.check is None:
            return await self.app(scope, receive, self._normalising(exchange, send))
        headers = dict(scope["headers"])
        try:
            body = await self._read_body(exchange, headers, receive)
            content_type, charset = media_type(headers.get(b"content-type", b""))
            parsed = route.check(body, content_type, charset, self.settings.max_batch_size)
        except Rejection as rejection:
            return await self._reject(exchange, send, rejection)
        canonical = json.dumps(parsed).encode()
        scope = {**scope, "headers": _with_json_body(scope["headers"], len(canonical))}
        return await self.app(scope, _replay(canonical, receive), self._normalising(exchange, send))

    async def _read_body(self, exchange: Exchange, headers: dict, receive) -> bytes:
        """The whole body, within the body timeout and the size limit."""
        limit = self.settings.max_body_bytes
        too_large = Rejection(413, "body_too_large", f"body is over the limit of {limit} bytes")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        break
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > limit:
                        raise too_large
                    if not message.get("more_body", False):
                        exchange.body_read = True
                        break
        except TimeoutError:
            seconds = self.settings.body_timeout_seconds
            raise Rejection(408, "body_timeout", f"the body was not sent within {seconds:g} s") from None
        return b"".join(chunks)

    async def _reject(self, exchange: Exchange, send, rejection: Rejection, headers=()) -> None:
        exchange.reason = rejection.reason
        if self.settings.telemetry_on:
            metrics.count_rejection(exchange.route.endpoint, rejection.reason)
        await self._respond(exchange, send, rejection.status, rejection.message, rejection.reason, headers)

    async def _respond(self, exchange, send, status: int, message: str, reason: str, headers=()) -> None:
        # A body not read to its end leaves the connection unusable for another request: close it.
        closing = [(b"connection", b"close")] if exchange.route.check and not exchange.body_read else []
        await self._send(send, status, error_body(message, reason), JSON_TYPE, [*headers, *closing])

    @staticmethod
    async def _send(send, status: int, body: bytes, content_type: bytes, headers=(), head=False) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def _api_schema(self, scope, receive) -> bytes:
        if self.api_schema is None:
            captured = Captured()
            await self.app(scope, receive, captured)
            spec = api_schema.amended(json.loads(captured.body), self.settings.max_batch_size, self.labels())
            self.api_schema = json.dumps(spec).encode()
        return self.api_schema

    def _recording(self, exchange: Exchange, send) -> Callable[[dict], Awaitable[None]]:
        async def recording(message: dict) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
            await send(message)

        return recording

    def _normalising(self, exchange: Exchange, send) -> Callable[[dict], Awaitable[None]]:
        """`send` for BentoML's answers: an error without our shape gets it, and is counted."""
        held: list[dict] = []

        async def normalising(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held.append(message)
                return
            if not held:
                return await send(message)
            held.append(message)
            if message.get("more_body"):
                return
            status = held[0]["status"]
            body = b"".join(m.get("body", b"") for m in held[1:])
            exchange.reason = _reason(body)
            if not exchange.reason:
                exchange.reason = REASONS.get(status, "error")
                if status < 500 and self.settings.telemetry_on:
                    metrics.count_rejection(exchange.route.endpoint, exchange.reason)
                body = error_body(HTTPStatus(status).phrase, exchange.reason)
            await self._send(send, status, body, JSON_TYPE)

        return normalising

    def _record(self, exchange: Exchange) -> None:
        seconds = time.perf_counter() - exchange.started
        label = exchange.route.label
        metrics.http_in_progress(label).dec()
        metrics.http_requests(label, exchange.method, exchange.status or 500).inc()
        metrics.http_duration(label).observe(seconds)
        api_success = exchange.route.check is not None and exchange.status < 400
        if exchange.route.logged and not api_success:  # predictions and feedback have their own events
            fields = {"method": exchange.method, "route": label, "status": exchange.status}
            fields["duration_ms"] = round(seconds * 1000, 3)
            if exchange.reason:
                fields["reason"] = exchange.reason
            level = logging.ERROR if exchange.status >= 500 else logging.INFO
            requests_log.log(level, "request", extra={"fields": fields})


class Captured:
    """A `send` that keeps the response body (BentoML's OpenAPI schema, to amend)."""

    def __init__(self) -> None:
        self.body = b""

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.body":
            self.body += message.get("body", b"")


def _reason(body: bytes) -> str:
    """The reason of an error answered in our shape, else ""."""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    shaped = isinstance(data, dict) and "error" in data and isinstance(data.get("reason"), str)
    return data["reason"] if shaped else ""


class HandshakeClosed(Exception):
    """The server's WebSocket library closed the handshake before it could be refused."""


def _denying(send):
    """`send` for a refused WebSocket handshake: the HTTP response as the denial extension's messages."""

    async def denying(message: dict) -> None:
        try:
            await send({**message, "type": f"websocket.{message['type']}"})
        except Exception as error:  # e.g. wsproto, on a handshake with a chunked body
            raise HandshakeClosed from error

    return denying


def _with_json_body(headers: list, length: int) -> list:
    kept = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]
    return [*kept, (b"content-type", JSON_TYPE), (b"content-length", str(length).encode())]


def _replay(body: bytes, receive):
    """`receive` for BentoML: the canonical body, then whatever comes next (a disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
