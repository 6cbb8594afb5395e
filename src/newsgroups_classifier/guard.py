"""HTTP input checks in front of the BentoML API.

An ASGI middleware, so that every bad request gets a clear 4xx with its reason counted before BentoML
parses anything, and so that /predict can take raw text bodies (`curl --data "..."` sends them as
form-urlencoded) as well as JSON: accepted bodies are handed on as canonical JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from .metrics import count_rejection
from .tracing import current_traceparent

RAW_TEXT_TYPES = ("text/plain", "application/x-www-form-urlencoded", "")
JSON_TYPE = "application/json"


@dataclass
class Rejection(Exception):
    status: int
    reason: str
    message: str


def _media_type(headers: dict[bytes, bytes]) -> tuple[str, str]:
    value = headers.get(b"content-type", b"").decode("latin-1")
    media_type, _, params = value.partition(";")
    charset = ""
    for param in params.split(";"):
        key, _, val = param.strip().partition("=")
        if key.lower() == "charset":
            charset = val.strip().strip('"').lower()
    return media_type.strip().lower(), charset


def _decode(body: bytes, charset: str = "") -> str:
    if charset and charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
        raise Rejection(415, "unsupported_media_type", f"charset {charset!r} is not supported: send UTF-8")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejection(400, "invalid_utf8", f"body is not valid UTF-8 (byte {exc.start})") from exc


def _json(body: bytes) -> object:
    text = _decode(body)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejection(400, "malformed_json", f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # nesting deeper than Python's recursion limit
        raise Rejection(400, "malformed_json", "body is JSON nested too deeply") from exc


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise Rejection(422, "invalid_field", f"{where} must be a string")
    if not value.strip():
        raise Rejection(400, "empty_text", f"{where} is empty or only whitespace")
    return value


def _json_object(body: bytes, media_type: str, fields: tuple[str, ...]) -> dict:
    if media_type != JSON_TYPE:
        raise Rejection(
            415, "unsupported_media_type", f"send {JSON_TYPE}, not {media_type or 'no content type'}"
        )
    data = _json(body)
    if not isinstance(data, dict) or set(fields) - set(data):
        raise Rejection(422, "invalid_field", f"expected a JSON object with the fields {', '.join(fields)}")
    return data


def predict_body(body: bytes, media_type: str, charset: str, _limit: int) -> dict:
    if media_type in RAW_TEXT_TYPES:
        return {"text": _text(_decode(body, charset), "text")}
    if media_type == JSON_TYPE:
        data = _json(body)
        if not isinstance(data, dict) or "text" not in data:
            raise Rejection(422, "invalid_field", 'expected a JSON object {"text": "..."}')
        return {"text": _text(data["text"], "text")}
    raise Rejection(
        415,
        "unsupported_media_type",
        f"content type {media_type!r} is not supported: send text/plain, application/x-www-form-urlencoded "
        "(raw text, as curl --data does) or application/json",
    )


def batch_body(body: bytes, media_type: str, _charset: str, limit: int) -> dict:
    texts = _json_object(body, media_type, ("texts",))["texts"]
    if not isinstance(texts, list) or not texts:
        raise Rejection(422, "invalid_field", '"texts" must be a non-empty list of strings')
    if len(texts) > limit:
        raise Rejection(413, "batch_too_large", f"batch of {len(texts)} texts is over the limit of {limit}")
    traceparent = current_traceparent()  # the request's server span is current here
    return {
        "texts": [
            {"text": _text(text, f"texts[{i}]"), "traceparent": traceparent} for i, text in enumerate(texts)
        ]
    }


def feedback_body(body: bytes, media_type: str, _charset: str, _limit: int) -> dict:
    data = _json_object(body, media_type, ("prediction_id", "label"))
    for field in ("prediction_id", "label"):
        if not isinstance(data[field], str) or not data[field]:
            raise Rejection(422, "invalid_field", f"{field} must be a non-empty string")
    return {"prediction_id": data["prediction_id"], "label": data["label"]}


ROUTES: dict[str, tuple[str, Callable[[bytes, str, str, int], dict]]] = {
    "/predict": ("predict", predict_body),
    "/predict_batch": ("predict_batch", batch_body),
    "/feedback": ("feedback", feedback_body),
}


class RequestGuard:
    def __init__(self, app, max_body_bytes: int, max_batch_size: int):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_batch_size = max_batch_size

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        route = ROUTES.get(scope["path"])
        if route is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        endpoint, parse = route
        try:
            body = await self._read_body(headers, receive)
            media_type, charset = _media_type(headers)
            canonical = json.dumps(parse(body, media_type, charset, self.max_batch_size)).encode()
        except Rejection as rejection:
            count_rejection(endpoint, rejection.reason)
            return await send_json(
                send, rejection.status, {"error": rejection.message, "reason": rejection.reason}
            )
        scope = dict(scope)
        scope["headers"] = [
            (k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")
        ]
        scope["headers"] += [
            (b"content-type", JSON_TYPE.encode()),
            (b"content-length", str(len(canonical)).encode()),
        ]
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # after the body: disconnect notices
            sent = True
            return {"type": "http.request", "body": canonical, "more_body": False}

        return await self.app(scope, replay, send)

    async def _read_body(self, headers: dict[bytes, bytes], receive) -> bytes:
        too_large = Rejection(413, "body_too_large", f"body is over the limit of {self.max_body_bytes} bytes")
        declared = headers.get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


async def send_json(send, status: int, payload: dict) -> None:
    await send_bytes(send, status, json.dumps(payload).encode(), JSON_TYPE)


async def send_bytes(send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
