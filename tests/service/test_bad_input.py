"""Bad input: a clear 4xx per case, counted by reason, and the workers keep serving."""

from __future__ import annotations

import json

import pytest
import requests
from test_metrics import scrape, value

from newsgroups_classifier.local_config import shipped_service_env

LIMIT = int(shipped_service_env()["MAX_BODY_BYTES"])
GOOD = "The Yankees need a better pitcher this season"

CASES = {
    # name: (path, body, content type, status, reason, words the message must contain)
    "empty": ("/predict", b"", "text/plain", 400, "empty_text", "empty"),
    "whitespace": (
        "/predict",
        b" \n\t ",
        "application/x-www-form-urlencoded",
        400,
        "empty_text",
        "whitespace",
    ),
    "json whitespace": ("/predict", b'{"text": "   "}', "application/json", 400, "empty_text", "empty"),
    "too large": ("/predict", b"a" * (LIMIT + 1), "text/plain", 413, "body_too_large", "limit"),
    "not utf-8": ("/predict", b"caf\xe9 racer", "text/plain", 400, "invalid_utf8", "UTF-8"),
    "latin-1 charset": (
        "/predict",
        b"caf\xe9",
        "text/plain; charset=latin-1",
        415,
        "unsupported_media_type",
        "UTF-8",
    ),
    "malformed json": (
        "/predict",
        b'{"text": "unterminated',
        "application/json",
        400,
        "malformed_json",
        "JSON",
    ),
    "json nested too deeply": (
        "/predict",
        b"[" * 100_000 + b"]" * 100_000,
        "application/json",
        400,
        "malformed_json",
        "nested",
    ),
    "json without text": ("/predict", b'{"body": "x"}', "application/json", 422, "invalid_field", "text"),
    "json text not a string": (
        "/predict",
        b'{"text": 42}',
        "application/json",
        422,
        "invalid_field",
        "string",
    ),
    "wrong content type": ("/predict", b"<p>hi</p>", "text/html", 415, "unsupported_media_type", "text/html"),
    "batch over limit": (
        "/predict_batch",
        json.dumps({"texts": [GOOD] * 65}).encode(),
        "application/json",
        413,
        "batch_too_large",
        "65",
    ),
    "batch empty list": (
        "/predict_batch",
        b'{"texts": []}',
        "application/json",
        422,
        "invalid_field",
        "non-empty",
    ),
    "batch with blank": (
        "/predict_batch",
        json.dumps({"texts": [GOOD, " "]}).encode(),
        "application/json",
        400,
        "empty_text",
        "texts[1]",
    ),
    "batch as text": (
        "/predict_batch",
        b"hello",
        "text/plain",
        415,
        "unsupported_media_type",
        "application/json",
    ),
    "feedback malformed json": ("/feedback", b"{", "application/json", 400, "malformed_json", "JSON"),
    "feedback missing field": (
        "/feedback",
        b'{"label": "rec.autos"}',
        "application/json",
        422,
        "invalid_field",
        "prediction_id",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_a_clear_4xx_and_is_counted(service, case):
    path, body, content_type, status, reason, words = CASES[case]
    endpoint = path.strip("/")
    before = value(
        scrape(service.url), "newsgroups_rejected_requests_total", endpoint=endpoint, reason=reason
    )
    response = requests.post(
        f"{service.url}{path}", data=body, headers={"Content-Type": content_type}, timeout=30
    )
    assert response.status_code == status, response.text
    assert response.json()["reason"] == reason
    assert words in response.json()["error"]
    after = value(scrape(service.url), "newsgroups_rejected_requests_total", endpoint=endpoint, reason=reason)
    assert after - before == 1


def test_a_chunked_body_over_the_limit_is_cut_off(service):
    def chunks():
        for _ in range(20):
            yield b"b" * (LIMIT // 10)

    response = requests.post(
        f"{service.url}/predict", data=chunks(), headers={"Content-Type": "text/plain"}, timeout=30
    )
    assert response.status_code == 413


def test_workers_survive_the_whole_matrix(service):
    for path, body, content_type, *_ in CASES.values():
        requests.post(f"{service.url}{path}", data=body, headers={"Content-Type": content_type}, timeout=30)
    response = requests.post(
        f"{service.url}/predict", data=GOOD.encode(), headers={"Content-Type": "text/plain"}, timeout=10
    )
    assert response.status_code == 200
    assert service.process.poll() is None
    assert not any('"level":"error"' in line for line in service.log_lines())
