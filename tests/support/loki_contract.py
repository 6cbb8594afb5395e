"""Loki's side of the log path, as its documentation states it, for the contract tests: Loki (AGPL-3.0) is
never run here.

- OTLP ingestion (`/otlp/v1/logs`): the resource attributes of `limits_config.otlp_config` become the
  stream's labels, names normalised (dots to underscores); every other resource and log attribute becomes
  structured metadata, as do the record's TraceId/SpanId (`trace_id`, `span_id`, lowercase hex) and
  `severity_text`. The line is the record's body.
- Queries (`/loki/api/v1/query_range`): a stream selector, line filters and label filters (which match
  labels and structured metadata alike), at most `limit` entries from `start` (inclusive) to `end`
  (exclusive) in `direction` order, answered as `{"status": "success", "data": {"resultType": "streams",
  "result": [{"stream": {...}, "values": [["<ns>", "<line>"], ...]}]}}`; without the categorize-labels
  flag each stream's labels include the structured metadata.

Only the LogQL this project ships is understood (selectors, line filters, `| label = "value"`); anything
else is an error, so a query that changes shape fails the contract tests instead of passing them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from support.otlp_receiver import ReceivedLog


@dataclass(frozen=True)
class Entry:
    labels: dict[str, str]
    metadata: dict[str, str]
    line: str
    time_ns: int


def loki_name(attribute: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", attribute)


def ingested(record: ReceivedLog, index_attributes: list[str]) -> Entry:
    """What Loki's OTLP endpoint stores for one log record."""
    labels = {loki_name(a): str(record.resource[a]) for a in index_attributes if a in record.resource}
    metadata = {loki_name(k): str(v) for k, v in record.resource.items() if k not in index_attributes}
    metadata |= {loki_name(k): str(v) for k, v in record.attributes.items()}
    ids = {"trace_id": record.trace_id, "span_id": record.span_id, "severity_text": record.severity_text}
    metadata |= {key: value for key, value in ids.items() if value}
    return Entry(labels, metadata, record.body, record.time_ns)


MATCHER = re.compile(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
STAGE = re.compile(
    r'\s*(?:(\|=|!=|\|~|!~)\s*(?:"((?:[^"\\]|\\.)*)"|`([^`]*)`)|\|\s*(\w+)\s*(=|!=)\s*"((?:[^"\\]|\\.)*)")'
)


def matches(op: str, actual: str | None, expected: str) -> bool:
    if op in ("=~", "!~"):
        found = actual is not None and re.fullmatch(expected, actual) is not None
        return found if op == "=~" else not found
    return (actual == expected) if op == "=" else (actual != expected)


def selector(query: str) -> tuple[list[tuple[str, str, str]], str]:
    """The stream selector's matchers and the rest of the query."""
    found = re.match(r"\s*\{([^}]*)\}", query)
    if not found:
        raise ValueError(f"not a log query: {query}")
    body, matchers, position = found.group(1), [], 0
    while position < len(body):
        matcher = MATCHER.match(body, position)
        if not matcher:
            raise ValueError(f"bad stream selector in {query}")
        name, op, value = matcher.group(1), matcher.group(2), json.loads(f'"{matcher.group(3)}"')
        matchers.append((name, op, value))
        position = matcher.end()
    return matchers, query[found.end() :]


def select(entries: list[Entry], query: str) -> list[Entry]:
    """The entries a log query returns, in Loki's semantics, for the LogQL subset we ship."""
    matchers, rest = selector(query)
    chosen = [e for e in entries if all(matches(op, e.labels.get(n), v) for n, op, v in matchers)]
    position = 0
    while rest[position:].strip():
        stage = STAGE.match(rest, position)
        if not stage:
            raise ValueError(f"LogQL this contract does not model: {rest[position:]!r} in {query}")
        line_op, quoted, raw, label, label_op, label_value = stage.groups()
        if line_op:
            text = raw if raw is not None else json.loads(f'"{quoted}"')
            if line_op in ("|=", "!="):
                chosen = [e for e in chosen if (text in e.line) == (line_op == "|=")]
            else:
                chosen = [e for e in chosen if (re.search(text, e.line) is not None) == (line_op == "|~")]
        else:
            value = json.loads(f'"{label_value}"')
            chosen = [e for e in chosen if matches(label_op, {**e.metadata, **e.labels}.get(label), value)]
        position = stage.end()
    return chosen


def query_range(entries: list[Entry], params: dict[str, str]) -> dict:
    """Loki's `query_range` answer for log queries."""
    start, end = int(params["start"]), int(params["end"])
    limit = int(params.get("limit", 100))
    forward = params.get("direction", "backward") == "forward"
    found = [e for e in select(entries, params["query"]) if start <= e.time_ns < end]
    found = sorted(found, key=lambda e: e.time_ns, reverse=not forward)[:limit]
    streams: dict[tuple, dict] = {}
    for entry in found:
        labels = {**entry.metadata, **entry.labels}
        stream = streams.setdefault(tuple(sorted(labels.items())), {"stream": labels, "values": []})
        stream["values"].append([str(entry.time_ns), entry.line])
    return {"status": "success", "data": {"resultType": "streams", "result": list(streams.values())}}


QUERY_RANGE = "/loki/api/v1/query_range"


def answer(entries: list[Entry], params: dict[str, str]) -> tuple[int, dict]:
    """Loki's answer to a query_range request: (HTTP status, JSON body)."""
    try:
        return 200, query_range(entries, params)
    except (KeyError, ValueError) as exc:
        return 400, {"status": "error", "error": str(exc)}


class QueryApi:
    """Loki's `GET /loki/api/v1/query_range` (QUERY_RANGE) over `entries()` at the time of each request,
    keeping each request's parameters in `queries`. Served beside an OtlpReceiver's OTLP endpoint (its
    `read_api`), as Loki serves its query API on the port it ingests on."""

    def __init__(self, entries: Callable[[], list[Entry]]) -> None:
        self.entries = entries
        self.queries: list[dict[str, str]] = []

    def __call__(self, params: dict[str, str]) -> tuple[int, dict]:
        self.queries.append(params)
        return answer(self.entries(), params)
