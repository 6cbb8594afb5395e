"""A burst of oversized and malformed requests during load: each gets its 4xx, valid traffic goes on
unaffected (no failure, the same answers as before the burst), and every rejection is counted."""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import requests

from newsgroups_classifier.local_config import shipped_service_env
from support.load_driver import Load, Outcome, Request, describe, labels, predictions, send, started_between
from support.processes import poll_until
from support.service_process import scrape, start_server, value

SHIPPED = shipped_service_env()
LIMIT = int(SHIPPED["MAX_BODY_BYTES"])
MAX_BATCH = int(SHIPPED["MAX_BATCH_SIZE"])
REPEATS = 20  # of each case
BURST_THREADS = 16
CLIENTS = 4
DOCUMENTS = 40  # the valid traffic cycles over these, so each is answered before, during and after


def chunks(size: int, chunk: int = 64 * 1024) -> object:
    """A body sent with chunked transfer encoding: no Content-Length to reject it by."""
    return (b"a" * chunk for _ in range(size // chunk))


def case(kind: str, path: str, status: int, reason: str, **options) -> tuple[Request, int, str]:
    return Request(kind, path, options), status, reason


def bad_requests(text: str) -> list[tuple[Request, int, str]]:
    """One of each case: (request, expected status, rejection reason counted on /metrics)."""
    as_json, as_text = {"Content-Type": "application/json"}, {"Content-Type": "text/plain"}
    nested = b"[" * 100_000 + b"]" * 100_000  # valid JSON, deeper than any parser's recursion limit
    forged = {"prediction_id": "Zm9yZ2Vk.bm90LXNpZ25lZA", "label": "rec.autos"}
    return [
        case("blank text", "/predict", 400, "empty_text", json={"text": " \n\t "}),
        case("malformed JSON", "/predict", 400, "malformed_json", data=b'{"text": "unter', headers=as_json),
        case("deeply nested JSON", "/predict", 400, "malformed_json", data=nested, headers=as_json),
        case("not UTF-8", "/predict", 400, "invalid_utf8", data=b"caf\xe9", headers=as_text),
        case(
            "unsupported type",
            "/predict",
            415,
            "unsupported_media_type",
            data=b"<p>",
            headers={"Content-Type": "text/html"},
        ),
        case("text not a string", "/predict", 422, "invalid_field", json={"text": 42}),
        case(
            "body over the limit", "/predict", 413, "body_too_large", data=b"a" * (LIMIT + 1), headers=as_text
        ),
        case(
            "chunked, over the limit",
            "/predict",
            413,
            "body_too_large",
            data=chunks(4 * LIMIT),
            headers=as_text,
        ),
        case(
            "batch over the limit",
            "/predict_batch",
            413,
            "batch_too_large",
            json={"texts": [text] * (MAX_BATCH + 1)},
        ),
        case("batch with a blank text", "/predict_batch", 400, "empty_text", json={"texts": [text, " "]}),
        case("forged prediction id", "/feedback", 404, "unknown_id", json=forged),
    ]


def send_once(url: str, request: Request) -> Outcome:
    with requests.Session() as session:
        return send(session, url, request)


def latency_summary(outcomes: list[Outcome]) -> str:
    took = sorted((o.finished - o.started) * 1000 for o in outcomes)
    if len(took) < 2:
        return f"{len(took)} requests"
    p95 = took[int(0.95 * (len(took) - 1))]
    return f"{len(took)} requests, p50 {statistics.median(took):.0f} ms, p95 {p95:.0f} ms"


def test_burst_of_bad_requests_during_load(models_home, docs, tmp_path):
    texts = docs.texts[:DOCUMENTS]
    burst = [case for _ in range(REPEATS) for case in bad_requests(texts[0])]
    server = start_server(models_home, tmp_path, sample_rate=0.0)
    try:
        before = scrape(server.url)
        with Load(server.url, CLIENTS, lambda client: predictions(texts, client)) as load:
            poll_until(
                lambda: load.completed() >= DOCUMENTS, timeout=60, what="valid traffic before the burst"
            )
            burst_started = time.monotonic()
            with ThreadPoolExecutor(BURST_THREADS) as pool:
                rejected = list(pool.map(lambda case: send_once(server.url, case[0]), burst))
            burst_ended = time.monotonic()
            poll_until(
                lambda: load.completed(since=burst_ended) >= DOCUMENTS,
                timeout=60,
                what="valid traffic after the burst",
            )
        after = scrape(server.url)
        valid = load.snapshot()
    finally:
        server.stop()

    wrong = [
        outcome for outcome, (_, status, _) in zip(rejected, burst, strict=True) if outcome.status != status
    ]
    assert not wrong, f"{len(wrong)} of {len(burst)} bad requests did not get their 4xx:\n" + "\n".join(
        sorted({f"{o.request.kind}: status {o.status} {o.error[:120]}" for o in wrong})
    )
    expected_reasons = Counter(reason for _, _, reason in burst)
    for reason, count in expected_reasons.items():
        counted = value(after, "newsgroups_rejected_requests_total", reason=reason) - value(
            before, "newsgroups_rejected_requests_total", reason=reason
        )
        assert counted == count, f"{reason}: {count} rejections sent, {counted:g} counted"

    failed = [outcome for outcome in valid if not outcome.ok]
    assert not failed, f"{len(failed)} of {len(valid)} valid requests failed:\n{describe(failed)}"
    during = started_between(valid, burst_started, burst_ended)
    assert during, "no valid request was served during the burst"
    answers: dict[object, set] = defaultdict(set)
    for outcome in valid:
        answers[outcome.request.key].add(labels(outcome))
    changed = {key: found for key, found in answers.items() if len(found) > 1}
    assert not changed, f"the same documents got different answers during the load: {changed}"
    print(
        f"{len(burst)} bad requests in {burst_ended - burst_started:.1f} s, each with its 4xx. Valid: before "
        f"{latency_summary(started_between(valid, 0, burst_started))}; during {latency_summary(during)}; "
        f"after {latency_summary(started_between(valid, burst_ended, float('inf')))}"
    )
