"""Hypothesis at the HTTP level, for what the API schema cannot describe: any method, path, header bytes
and body, framed by Content-Length (true or short of the body) or in chunks, over a plain socket.

Every request gets its answer, or a JSON error with a 4xx and one of the service's reasons, within a
bounded time, and each 4xx is counted once as a rejection. Bytes that are not HTTP at all never reach
the service: uvicorn answers them with its own plain-text 400 and closes the connection.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from newsgroups_classifier import http_edge, metrics
from newsgroups_classifier.local_config import shipped_service_env
from support.fuzzing import MARKER, SEED, assert_still_well, counted_4xx, examples, snapshot
from support.raw_http import exchange, request_bytes
from support.service_process import start_server

SHIPPED = shipped_service_env()
LIMIT = int(SHIPPED["MAX_BODY_BYTES"])
MAX_BATCH = int(SHIPPED["MAX_BATCH_SIZE"])
# Shorter than shipped, so that a body shorter than its Content-Length is answered (408) in good time.
BODY_TIMEOUT_SECONDS = 2
ANSWERED_WITHIN = 10.0  # seconds, the longest any request may wait for its answer here
REASONS = {*metrics.REJECTION_REASONS, *http_edge.REASONS.values(), "error"}
PARSER_ERROR = b"Invalid HTTP request received."  # uvicorn's answer to what is not HTTP/1.1

API = ["/predict", "/predict_batch", "/feedback"]
PATHS = [
    *API,
    "/livez",
    "/readyz",
    "/healthz",
    "/metrics",
    "/docs.json",
    "/schema.json",
    "/",
    "/static_content/x",
]
# Methods the HTTP parser knows (others are not HTTP to it: tested with the bytes that are not HTTP).
METHODS = [b"POST"] * 6 + [
    b"GET",
    b"HEAD",
    b"PUT",
    b"PATCH",
    b"DELETE",
    b"OPTIONS",
    b"TRACE",
    b"PROPFIND",
    b"PURGE",
]
CONTENT_TYPES = [b"application/json", b"text/plain", b"application/x-www-form-urlencoded", b"text/html", b""]


@pytest.fixture(scope="module")
def fuzzed(models_home, tmp_path_factory):
    server = start_server(
        models_home,
        tmp_path_factory.mktemp("fuzzed-http"),
        sample_rate=0.0,
        env={"BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_SECONDS)},
    )
    yield server
    server.stop()


# --- what is generated --------------------------------------------------------------------------------
# Text with every kind of character, lone surrogates too; each carries the marker the log must not hold.
any_text = st.text(st.characters(categories=["L", "M", "N", "P", "S", "Z", "C"]), max_size=60)
texts = st.builds(lambda before, after: f"{before}{MARKER}{after}", any_text, any_text)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)
api_documents = st.one_of(
    st.fixed_dictionaries({"text": texts | json_values}, optional={"extra": json_values}),
    st.fixed_dictionaries({"texts": st.lists(texts, max_size=MAX_BATCH + 3) | json_values}),
    st.fixed_dictionaries({"prediction_id": any_text | json_values, "label": texts | json_values}),
    json_values,
)


def in_json(document: object) -> bytes:
    """JSON as a client may send it: with \\ud800 escapes for lone surrogates, NaN and Infinity."""
    return json.dumps(document, ensure_ascii=True).encode()


def huge_number(digits: int) -> bytes:
    return b'{"text": ' + b"9" * digits + b', "texts": [1e999999], "prediction_id": -' + b"7" * digits + b"}"


def nested(depth: int) -> bytes:
    return b'{"text": "a", "x": ' + b'{"a": [' * depth + b"]}" * depth + b"}"


bodies = st.one_of(
    api_documents.map(in_json),
    texts.map(lambda text: text.encode("utf-8", "surrogatepass")),  # raw text, and invalid UTF-8
    st.binary(max_size=2048),
    st.integers(4301, 20_000).map(huge_number),  # past Python's limit on digits
    st.integers(100, 120_000).map(nested),  # past Python's recursion limit
    st.integers(1, 1000).map(lambda over: b"a" * (LIMIT + over)),  # over MAX_BODY_BYTES
)
# Header values: any byte HTTP allows in a field value (RFC 9110: visible ASCII, space, tab, obs-text).
header_values = st.binary(max_size=80).map(
    lambda value: bytes(b for b in value if b in (0x09, 0x20) or 0x21 <= b <= 0x7E or b >= 0x80)
)
content_types = st.one_of(
    st.sampled_from(CONTENT_TYPES),
    st.tuples(st.sampled_from(CONTENT_TYPES), header_values).map(lambda ct: ct[0] + b"; " + ct[1]),
    st.sampled_from([b"text/plain; charset=latin-1", b"application/json; charset=utf-16", b"TEXT/PLAIN"]),
    header_values,
)
header_names = st.one_of(
    st.sampled_from(
        [b"traceparent", b"tracestate", b"baggage", b"Accept", b"Expect", b"Connection", b"Cookie"]
    ),
    st.from_regex(rb"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z").filter(
        lambda name: name.lower() not in (b"host", b"content-length", b"transfer-encoding", b"upgrade")
    ),
)
extra_headers = st.lists(
    st.tuples(header_names, header_values.map(lambda value: MARKER.encode() + value)), max_size=4
)
WEBSOCKET = [
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"Sec-WebSocket-Version", b"13"),
]
paths = st.one_of(
    st.sampled_from(API),
    st.sampled_from(PATHS),
    st.binary(max_size=40).map(lambda raw: "/" + urllib.parse.quote(raw, safe="")),
    st.tuples(st.sampled_from(PATHS), st.binary(max_size=20)).map(
        lambda pair: pair[0] + "?" + urllib.parse.quote(pair[1], safe="=&")
    ),
    st.tuples(st.sampled_from(API), st.sampled_from(["/", "/x", "//", "/.."])).map("".join),
)


@st.composite
def requests_(draw) -> tuple[bytes, bytes, bool]:
    """(method, the whole request's bytes, whether it is a WebSocket handshake)."""
    method, body = draw(st.sampled_from(METHODS)), draw(bodies)
    headers = [(b"Host", b"127.0.0.1")]
    if draw(st.booleans()):
        headers.append((b"Content-Type", draw(content_types)))
    headers += draw(extra_headers)
    handshake = method == b"GET" and draw(st.integers(0, 3)) == 0
    if handshake:  # one its library refuses (not a GET, a header it cannot decode) never reaches the edge
        headers = [(name, value) for name, value in headers if value.isascii()] + WEBSOCKET
    framing = draw(st.sampled_from(["length"] * 6 + ["chunked"] * 2 + ["short"]))
    if framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        pieces = [body[start:end] for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece) + b"0\r\n\r\n"
    elif framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "short":  # a Content-Length that lies: more than is sent
        headers.append((b"Content-Length", str(len(body) + draw(st.integers(1, 100))).encode()))
    target = draw(paths).encode()
    return method, request_bytes(method, target, headers, body), handshake


# --- the tests ----------------------------------------------------------------------------------------


def test_any_request_gets_its_answer_or_a_json_4xx_in_time(fuzzed):
    before, (answered_before, rejected_before) = snapshot(fuzzed), counted_4xx(fuzzed.url)
    statuses, refused_handshakes = [], []

    @seed(SEED)
    @settings(
        max_examples=examples(1500),
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(requests_())
    def answered(request: tuple[bytes, bytes, bool]) -> None:
        method, data, handshake = request
        note(f"request: {data[:1000]!r}")
        if handshake and b"Transfer-Encoding: chunked" in data:
            # wsproto refuses a handshake with a chunked body itself (an empty 400, or it closes the
            # connection), the edge's refusal included: nothing the edge can answer, nothing it may log.
            refused_handshakes.append(data)
            try:
                assert exchange(fuzzed.port, data, timeout=ANSWERED_WITHIN, method=method).status < 500
            except ConnectionError:
                pass
            return
        reply = exchange(fuzzed.port, data, timeout=ANSWERED_WITHIN, method=method)
        statuses.append(reply.status)
        assert reply.status < 500, reply
        assert reply.seconds < ANSWERED_WITHIN
        if reply.status >= 400 and method != b"HEAD":  # a HEAD answer has no body
            assert reply.headers["content-type"] == "application/json", reply
            error = reply.json()
            assert isinstance(error["error"], str) and error["reason"] in REASONS, reply

    answered()
    print(f"{len(statuses)} requests: {sorted(set(statuses))}, {len(refused_handshakes)} refused by wsproto")
    answered_after, rejected_after = counted_4xx(fuzzed.url)
    assert rejected_after - rejected_before == answered_after - answered_before
    uncounted = answered_after - answered_before - sum(400 <= status < 500 for status in statuses)
    assert 0 <= uncounted <= len(refused_handshakes)  # the edge counts a refusal it could not send
    assert_still_well(fuzzed, before)


def test_bytes_that_are_not_http_get_a_400_or_an_answer(fuzzed):
    before, sent = snapshot(fuzzed), []

    @seed(SEED)
    @settings(max_examples=examples(500), deadline=None, database=None)
    @given(st.binary(max_size=300).filter(bytes.strip).map(lambda junk: junk + b"\r\n\r\n"))
    def answered(junk: bytes) -> None:
        note(f"bytes: {junk!r}")
        sent.append(junk)
        try:
            reply = exchange(fuzzed.port, junk, timeout=ANSWERED_WITHIN)
        except ConnectionError:
            return  # closed without an answer: nothing in it was a request
        assert reply.status < 500, reply
        if reply.body != PARSER_ERROR and reply.status >= 400:
            assert reply.json()["reason"] in REASONS, reply

    answered()
    print(f"{len(sent)} requests that are not HTTP")
    assert_still_well(fuzzed, before)


def test_a_body_short_of_its_content_length_gets_a_408_in_time_and_is_closed(fuzzed):
    before = snapshot(fuzzed)

    @seed(SEED)
    @settings(max_examples=examples(8), deadline=None, database=None)
    @given(
        st.sampled_from(API),
        content_types,
        bodies.filter(lambda body: len(body) < LIMIT),
        st.integers(1, 10_000),
    )
    def timed_out(path: str, content_type: bytes, body: bytes, missing: int) -> None:
        headers = [
            (b"Host", b"x"),
            (b"Content-Type", content_type),
            (b"Content-Length", b"%d" % (len(body) + missing)),
        ]
        reply = exchange(
            fuzzed.port, request_bytes(b"POST", path.encode(), headers, body), timeout=ANSWERED_WITHIN
        )
        assert (reply.status, reply.json()["reason"]) == (408, "body_timeout"), reply
        assert BODY_TIMEOUT_SECONDS <= reply.seconds < BODY_TIMEOUT_SECONDS + 3
        assert reply.headers["connection"] == "close"

    timed_out()
    assert_still_well(fuzzed, before)
