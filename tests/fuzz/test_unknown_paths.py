"""Metrics stay bounded whatever clients send: requests to paths the service does not have add no series."""

from __future__ import annotations

import random
import string
import urllib.parse

from support.fuzzing import SEED, examples, labels_outside_the_fixed_sets, series
from support.raw_http import exchange, request_bytes

METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"PROPFIND"]  # the last: OTHER


def unknown_path(rng: random.Random) -> str:
    segments = [
        "".join(rng.choices(string.printable + "éß漢", k=rng.randint(1, 12)))
        for _ in range(rng.randint(1, 4))
    ]
    return "/nope/" + "/".join(urllib.parse.quote(segment, safe="") for segment in segments)


def send(port: int, method: bytes, path: str) -> None:
    request = request_bytes(method, path.encode(), [(b"Host", b"x"), (b"Content-Length", b"0")])
    reply = exchange(port, request, timeout=10, method=method)
    assert reply.status == 404, reply


def test_requests_to_unknown_paths_add_no_series(fuzzed):
    rng = random.Random(SEED)
    for method in METHODS:  # the "unmatched" route's series for each method label exist from here on
        send(fuzzed.port, method, "/nope/first")
    series(fuzzed.url)  # and those of /metrics, which count a scrape once it is answered
    before = series(fuzzed.url)
    paths = [unknown_path(rng) for _ in range(examples(500))]
    for path in paths:
        send(fuzzed.port, rng.choice(METHODS), path)
    after = series(fuzzed.url)
    assert after - before == set(), sorted(after - before)[:20]
    assert not labels_outside_the_fixed_sets(after)
    exposition = "\n".join(str(labels) for _, labels in after)
    assert not [path for path in paths if urllib.parse.unquote(path) in exposition]
