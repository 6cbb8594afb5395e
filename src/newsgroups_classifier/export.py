"""Export logged predictions and their feedback from Loki as a labelled dataset (`make export-feedback`).

Closes the data loop: prediction events (and the feedback events that carry ground truth) are read
back through Loki's HTTP API, joined by prediction id and written as JSON Lines, one record per
prediction, ready for labelling (`--select`) or for training (`make train EXTRA_DATA=...`).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

# The labels both log agents give the classifier's streams (helm-config/loki/values.yaml, otlp_config).
DEFAULT_SELECTOR = '{namespace="newsgroups", container="newsgroups-classifier"}'
EVENT_FILTER = '|~ `"event":"(prediction|feedback)"`'
PAGE_LIMIT = 5000  # Loki's default max_entries_limit_per_query
DURATION = re.compile(r"^(\d+)([smhd])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class ExportError(RuntimeError):
    """Something the user must fix: unreachable Loki, a bad range, nothing to export."""


@dataclass
class LokiClient:
    url: str
    tenant: str = ""
    username: str = ""
    password: str = ""
    token: str = ""
    timeout: float = 30.0

    def query_range(self, query: str, start_ns: int, end_ns: int, limit: int) -> list[tuple[int, str]]:
        params = urllib.parse.urlencode(
            {"query": query, "start": start_ns, "end": end_ns, "limit": limit, "direction": "forward"}
        )
        request = urllib.request.Request(f"{self.url.rstrip('/')}/loki/api/v1/query_range?{params}")
        for name, value in self._headers().items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise ExportError(f"Loki at {self.url} answered {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ExportError(
                f"Loki at {self.url} is unreachable ({getattr(exc, 'reason', exc)}); "
                "check --loki-url (or LOKI_URL) and the port-forward"
            ) from exc
        entries = [(int(ts), line) for stream in body["data"]["result"] for ts, line in stream["values"]]
        return sorted(entries)

    def _headers(self) -> dict[str, str]:
        headers = {"X-Scope-OrgID": self.tenant} if self.tenant else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.username:
            credentials = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {credentials}"
        return headers


def read_lines(
    client: LokiClient, query: str, start_ns: int, end_ns: int, limit: int = PAGE_LIMIT
) -> Iterator[str]:
    """Every line in [start, end), page by page; a full page continues from its last timestamp."""
    seen: set[str] = set()  # lines already read at timestamp start_ns
    while True:
        page = client.query_range(query, start_ns, end_ns, limit)
        fresh = [(ts, line) for ts, line in page if not (ts == start_ns and line in seen)]
        yield from (line for _, line in fresh)
        if len(page) < limit:
            return
        last_ts = page[-1][0]
        if not fresh:
            raise ExportError(f"over {limit} lines share one timestamp: raise --page-size")
        seen = {line for ts, line in page if ts == last_ts} | (seen if last_ts == start_ns else set())
        start_ns = last_ts


@dataclass
class Dataset:
    predictions: dict[str, dict] = field(default_factory=dict)
    feedback: dict[str, str] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        try:
            event = json.loads(line)
            kind, prediction_id = event["event"], event["prediction_id"]
        except (ValueError, KeyError, TypeError):
            self.malformed.append(line)
            return
        if kind == "feedback":
            self.feedback[prediction_id] = event["true_label"]  # the newest wins
        elif kind == "prediction":
            self.predictions.setdefault(prediction_id, event)  # duplicates (retries, replicas) collapse

    def records(self) -> list[dict]:
        records = []
        for prediction_id, event in self.predictions.items():
            record = {
                "prediction_id": prediction_id,
                "time": event.get("ts"),
                "model_version": event.get("model_version"),
                "predicted_label": event.get("label"),
                "confidence": event.get("confidence"),
                "trace_id": event.get("trace_id"),
                "true_label": self.feedback.get(prediction_id),
            }
            for optional in ("text", "text_sha256"):
                if optional in event:
                    record[optional] = event[optional]
            records.append(record)
        return sorted(records, key=lambda r: (r["time"] or "", r["prediction_id"]))


def select_for_labelling(
    records: list[dict], least_confident: int, random_share: int, seed: int
) -> list[dict]:
    """The N least confident unlabelled predictions, plus a random sample of the other unlabelled ones.

    Volunteered labels over-represent errors; the random share keeps accuracy estimates honest.
    """
    unlabelled = [r for r in records if r["true_label"] is None]
    by_confidence = sorted(unlabelled, key=lambda r: r["confidence"])
    chosen = by_confidence[:least_confident]
    rest = by_confidence[least_confident:]
    sample = random.Random(seed).sample(rest, min(random_share, len(rest)))
    return [{**r, "selected_because": "least_confident"} for r in chosen] + [
        {**r, "selected_because": "random"} for r in sample
    ]


def summary(records: list[dict]) -> str:
    labelled = [r for r in records if r["true_label"] is not None]
    correct = sum(1 for r in labelled if r["true_label"] == r["predicted_label"])
    lines = [f"records: {len(records)}", f"labelled: {len(labelled)} ({len(labelled) / len(records):.1%})"]
    if labelled:
        lines.append(f"accuracy on the labelled share: {correct / len(labelled):.4f}")
    lines.append("predictions per class:")
    lines += [
        f"  {label}: {count}"
        for label, count in sorted(Counter(r["predicted_label"] for r in records).items())
    ]
    return "\n".join(lines)


def write_atomically(path: Path, records: list[dict]) -> None:
    """A temporary file renamed into place: a failed export never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(handle.name, path)


def parse_time(value: str, now: datetime) -> datetime:
    if match := DURATION.match(value):
        return now - timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ExportError(
            f"bad time {value!r}: use RFC 3339 (2026-11-22T10:00:00Z) or a duration ago (90m, 2h, 7d)"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def time_range(since: str, until: str | None, now: datetime | None = None) -> tuple[int, int]:
    now = now or datetime.now(UTC)
    start, end = parse_time(since, now), parse_time(until, now) if until else now
    if start >= end:
        raise ExportError(f"bad time range: start {start.isoformat()} is not before end {end.isoformat()}")
    return int(start.timestamp() * 1e9), int(end.timestamp() * 1e9)


def export(args: argparse.Namespace) -> list[dict]:
    client = LokiClient(args.loki_url, args.tenant, args.username, args.password, args.token)
    start_ns, end_ns = time_range(args.since, args.until)
    dataset = Dataset()
    for line in read_lines(client, f"{args.selector} {EVENT_FILTER}", start_ns, end_ns, args.page_size):
        dataset.add(line)
    if dataset.malformed:
        message = f"{len(dataset.malformed)} malformed line(s) skipped, e.g. {dataset.malformed[0][:200]!r}"
        if args.strict:
            raise ExportError(message)
        print(f"warning: {message}", file=sys.stderr)
    records = dataset.records()
    if not records:
        raise ExportError(
            f"no prediction events for {args.selector} between {args.since} and {args.until or 'now'}"
        )
    if args.select_least_confident or args.select_random:
        records = select_for_labelling(records, args.select_least_confident, args.select_random, args.seed)
    write_atomically(args.output, records)
    return records


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loki-url", default=env("LOKI_URL", "http://127.0.0.1:3100"))
    parser.add_argument(
        "--tenant", default=env("LOKI_TENANT", ""), help="X-Scope-OrgID, for multi-tenant Loki"
    )
    parser.add_argument("--username", default=env("LOKI_USERNAME", ""))
    parser.add_argument("--password", default=env("LOKI_PASSWORD", ""))
    parser.add_argument("--token", default=env("LOKI_TOKEN", ""), help="bearer token")
    parser.add_argument(
        "--selector", default=env("LOKI_SELECTOR", DEFAULT_SELECTOR), help="LogQL stream selector"
    )
    parser.add_argument("--since", default="24h", help="start: RFC 3339 or a duration ago (default 24h)")
    parser.add_argument("--until", default=None, help="end: RFC 3339 or a duration ago (default now)")
    parser.add_argument("--output", type=Path, default=Path("reports/feedback.jsonl"))
    parser.add_argument("--page-size", type=int, default=PAGE_LIMIT)
    parser.add_argument(
        "--select-least-confident",
        type=int,
        default=0,
        metavar="N",
        help="only the N least confident unlabelled predictions (for labelling)",
    )
    parser.add_argument(
        "--select-random", type=int, default=0, metavar="M", help="plus M unlabelled predictions at random"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--strict", action="store_true", help="fail on malformed lines instead of skipping them"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        records = export(args)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(summary(records))
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
