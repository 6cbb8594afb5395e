"""A small closed-loop load for the fault tests: client threads that record every request's outcome.

Each client has its own keep-alive session and sends the requests its generator gives it, back to
back, until the load stops. Outcomes carry their start and end on the monotonic clock, so a test can
ask what happened before, during and after the fault it caused.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import requests

PAUSE_AFTER_ERROR = 0.05  # seconds: a refused connection returns at once; do not spin on it


@dataclass(frozen=True)
class Request:
    kind: str  # what the test calls it, e.g. "predict" or a bad-input case
    path: str
    options: dict = field(default_factory=dict)  # for requests.post: json=, data=, headers=
    key: object = None  # e.g. which document, to compare answers over time


@dataclass
class Outcome:
    request: Request
    trace_id: str
    started: float
    finished: float
    status: int | None = None  # None: no HTTP response (connection refused or reset)
    error: str = ""
    body: object = None  # parsed JSON of a 2xx response

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def traceparent(trace_id: str) -> dict[str, str]:
    """The W3C header of a sampled trace `trace_id`, as a caller's client span would send it."""
    return {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


def send(session: requests.Session, url: str, request: Request) -> Outcome:
    """One request, continuing a sampled trace whose id the outcome keeps."""
    trace_id = secrets.token_hex(16)
    headers = {**request.options.get("headers", {}), **traceparent(trace_id)}
    options = {**request.options, "headers": headers}
    started = time.monotonic()
    try:
        response = session.post(url + request.path, timeout=60, **options)
    except requests.RequestException as exc:
        return Outcome(request, trace_id, started, time.monotonic(), error=f"{type(exc).__name__}: {exc}")
    outcome = Outcome(request, trace_id, started, time.monotonic(), response.status_code)
    if outcome.ok:
        outcome.body = response.json()
    else:
        outcome.error = response.text[:300]
    return outcome


class Load:
    """`clients` threads, each sending `requests(client)` back to back while the load runs."""

    def __init__(self, url: str, clients: int, requests_: Callable[[int], Iterator[Request]]):
        self.url = url
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(requests_(i),), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)

    def completed(self, since: float = 0.0) -> int:
        """Requests answered with a 2xx that started at or after `since`."""
        with self._lock:
            return sum(1 for outcome in self.outcomes if outcome.ok and outcome.started >= since)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def _client(self, requests_: Iterator[Request]) -> None:
        with requests.Session() as session:
            for request in requests_:
                if self._stop.is_set():
                    return
                outcome = send(session, self.url, request)
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.status is None:
                    time.sleep(PAUSE_AFTER_ERROR)


def started_between(outcomes: list[Outcome], start: float, end: float) -> list[Outcome]:
    return [outcome for outcome in outcomes if start <= outcome.started < end]


def describe(outcomes: list[Outcome], limit: int = 5) -> str:
    """The first few outcomes, for assertion messages."""
    return "\n".join(
        f"{o.request.kind} {o.request.path}: status {o.status} {o.error[:200]}" for o in outcomes[:limit]
    )


def predictions(
    texts: list[str], client: int, batch_every: int = 4, batch_size: int = 8
) -> Iterator[Request]:
    """Valid traffic: single predictions, and every `batch_every`-th request a small batch.

    Each client walks the documents from its own offset; `key` says which documents a request
    carries, so that answers to the same documents can be compared over time.
    """
    position = client * 97
    for sent in itertools.count():
        if sent % batch_every == batch_every - 1:
            indices = tuple((position + i) % len(texts) for i in range(batch_size))
            yield Request(
                "batch", "/predict_batch", {"json": {"texts": [texts[i] for i in indices]}}, indices
            )
        else:
            index = position % len(texts)
            yield Request("predict", "/predict", {"json": {"text": texts[index]}}, (index,))
        position += 1


def predictions_of(outcome: Outcome) -> list[dict]:
    """The predictions of a 2xx prediction outcome, in the order of its documents."""
    return outcome.body if isinstance(outcome.body, list) else [outcome.body]


def labels(outcome: Outcome) -> tuple[str, ...]:
    return tuple(prediction["label"] for prediction in predictions_of(outcome))
