"""Input checks of the API's request bodies, before BentoML parses them.

Each check turns an accepted body into the canonical JSON BentoML's API method reads, or raises a
Rejection with the status and reason the client gets. /predict also takes raw text bodies (`curl
--data "..."` sends them as form-urlencoded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

RAW_TEXT_TYPES = ("text/plain", "application/x-www-form-urlencoded", "")
JSON_TYPE = "application/json"


@dataclass
class Rejection(Exception):
    status: int
    reason: str
    message: str


def media_type(content_type: bytes) -> tuple[str, str]:
    """The media type and charset of a Content-Type header value (any bytes a client sends)."""
    value = content_type.decode("latin-1")
    kind, _, params = value.partition(";")
    charset = ""
    for param in params.split(";"):
        key, _, val = param.strip().partition("=")
        if key.lower() == "charset":
            charset = val.strip().strip('"').lower()
    return kind.strip().lower(), charset


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
    except RecursionError as exc:  # nesting deeper than Python's recursion limit
        raise Rejection(400, "malformed_json", "body is JSON nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, and numbers Python refuses (thousands of digits)
        raise Rejection(400, "malformed_json", f"body is not valid JSON: {str(exc)[:120]}") from exc


def _string(value: object, where: str) -> str:
    """A string that can be written as UTF-8 (JSON's \\ud800 escapes decode to lone surrogates)."""
    if not isinstance(value, str):
        raise Rejection(422, "invalid_field", f"{where} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Rejection(
            400, "invalid_unicode", f"{where} has a lone surrogate (character {exc.start})"
        ) from exc
    return value


def _text(value: object, where: str) -> str:
    if not _string(value, where).strip():
        raise Rejection(400, "empty_text", f"{where} is empty or only whitespace")
    return value


def _json_object(body: bytes, content_type: str, fields: tuple[str, ...]) -> dict:
    if content_type != JSON_TYPE:
        raise Rejection(
            415, "unsupported_media_type", f"send {JSON_TYPE}, not {content_type or 'no content type'}"
        )
    data = _json(body)
    if not isinstance(data, dict) or set(fields) - set(data):
        raise Rejection(422, "invalid_field", f"expected a JSON object with the fields {', '.join(fields)}")
    return data


def predict_body(body: bytes, content_type: str, charset: str, _limit: int) -> dict:
    if content_type in RAW_TEXT_TYPES:
        return {"text": _text(_decode(body, charset), "text")}
    if content_type == JSON_TYPE:
        data = _json(body)
        if not isinstance(data, dict) or "text" not in data:
            raise Rejection(422, "invalid_field", 'expected a JSON object {"text": "..."}')
        return {"text": _text(data["text"], "text")}
    raise Rejection(
        415,
        "unsupported_media_type",
        f"content type {content_type!r} is not supported: send text/plain, application/x-www-form-urlencoded "
        "(raw text, as curl --data does) or application/json",
    )


def batch_body(body: bytes, content_type: str, _charset: str, limit: int) -> dict:
    texts = _json_object(body, content_type, ("texts",))["texts"]
    if not isinstance(texts, list) or not texts:
        raise Rejection(422, "invalid_field", '"texts" must be a non-empty list of strings')
    if len(texts) > limit:
        raise Rejection(413, "batch_too_large", f"batch of {len(texts)} texts is over the limit of {limit}")
    return {"texts": [_text(text, f"texts[{i}]") for i, text in enumerate(texts)]}


def feedback_body(body: bytes, content_type: str, _charset: str, _limit: int) -> dict:
    data = _json_object(body, content_type, ("prediction_id", "label"))
    for field in ("prediction_id", "label"):
        if not _string(data[field], field):
            raise Rejection(422, "invalid_field", f"{field} must be a non-empty string")
    return {"prediction_id": data["prediction_id"], "label": data["label"]}
