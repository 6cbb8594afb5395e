"""The bulk paths of the telemetry, in this process, against what they replace: histogram observations,
signals, timestamps and exemplar buckets."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.utils import floatToGoString

from newsgroups_classifier import patches
from newsgroups_classifier.events import LOGGER, PredictionEvent, prediction_line
from newsgroups_classifier.metrics import observe_many
from newsgroups_classifier.model import build_pipeline, vectorize
from newsgroups_classifier.monitoring import signals
from newsgroups_classifier.telemetry import bucket_label, event_line, iso_milliseconds

EDGES = (0.25, 0.5, 0.75, 1.0)


def samples(histogram: Histogram) -> dict:
    return {(s.name, s.labels.get("le")): s.value for m in histogram.collect() for s in m.samples}


def test_observe_many_counts_what_observe_counts():
    rng = random.Random(7)
    values = [rng.uniform(-0.5, 1.5) for _ in range(500)] + list(EDGES) + [0.0, 30.0, -30.0]
    one, many = (
        Histogram(name, "h", ["model_version"], buckets=EDGES, registry=CollectorRegistry()).labels("v")
        for name in ("one", "many")
    )
    for value in values:
        one.observe(value)
    for start in range(0, len(values), 37):  # in flushes of different sizes
        observe_many(many, np.array(values[start : start + 37]))
    expected, got = samples(one), samples(many)
    assert [v for (name, _), v in expected.items() if name.endswith("_bucket")] == [
        v for (name, _), v in got.items() if name.endswith("_bucket")
    ]
    assert got[("many_count", None)] == len(values)
    assert math.isclose(got[("many_sum", None)], expected[("one_sum", None)], rel_tol=1e-9)


def test_signals_of_many_predictions():
    observed = signals(
        [4, 4, 0, 10],
        [4, 1, 0, 0],
        np.array([[1.0, 0.0, 0.0, 0.0], [0.25] * 4, [0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]]),
    )
    assert observed.confidence.tolist() == [1.0, 0.25, 0.7, 0.4]
    assert observed.entropy[0] == 0.0 and math.isclose(observed.entropy[1], 1.0)
    by_hand = -sum(p * math.log(p) for p in (0.4, 0.3, 0.2, 0.1)) / math.log(4)
    assert math.isclose(observed.entropy[3], by_hand, rel_tol=1e-9)
    assert observed.oov_ratio.tolist() == [0.0, 0.75, 1.0, 1.0]  # no token at all: all out of vocabulary
    assert observed.empty.tolist() == [False, False, True, True]
    assert observed.token_count.tolist() == [4, 4, 0, 10]


def test_vectorize_gives_the_vectorisers_features_and_the_known_tokens_per_document():
    rng = random.Random(7)
    words = [f"w{i}" for i in range(300)]  # w200 and up: never seen in training

    def document(vocabulary_size: int, most: int) -> list[str]:
        return ["common", *(rng.choice(words[:vocabulary_size]) for _ in range(rng.randint(0, most)))]

    vectorizer = build_pipeline().named_steps["tfidf"].fit([document(200, 60) for _ in range(80)])
    assert "common" not in vectorizer.vocabulary_  # in every document: dropped by max_df, so unknown
    documents = [[], ["w250"] * 3, *(document(300, 90) for _ in range(40))]
    features, known = vectorize(vectorizer, documents)
    expected = vectorizer.transform(documents)
    assert (features != expected).nnz == 0
    assert known.tolist() == [sum(token in vectorizer.vocabulary_ for token in doc) for doc in documents]
    assert known[0] == known[1] == 0 and max(known) > 20


def test_iso_milliseconds_is_datetimes_isoformat():
    rng = random.Random(3)
    times = [rng.uniform(0, 4e9) for _ in range(20_000)]
    times += [1764577503.0, 1764577503.9995, 1764577503.9994999, 1764577503.999999, 1764577503.0004999]
    for created in times:
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert iso_milliseconds(created) == expected, created


def test_bucket_label_is_the_first_bound_at_or_above_the_value():
    bounds = (0.0005, 0.001, 0.002, 0.5, 2.5)
    for value in (0.0, 0.0005, 0.00050001, 0.001, 0.3, 0.5, 2.5, 2.6, 1e9):
        expected = next((floatToGoString(b) for b in bounds if value <= b), "+Inf")
        assert bucket_label(value, bounds) == expected


TRICKY_TEXTS = ["plain", 'quote " and backslash \\ ', "tab\tnewline\ncontrol\x01", "ünïcödé ✓ 🎉", ""]


def test_prediction_lines_are_event_lines_of_their_fields():
    rng = random.Random(3)
    floats = [0.0, 1.0, 0.712345, 1e-7, 123456.789, float("nan"), float("inf"), -float("inf")]
    for _ in range(300):
        text_field = rng.choice([None, ("text_sha256", "ab" * 32), ("text", rng.choice(TRICKY_TEXTS))])
        event = PredictionEvent(
            created=1_764_000_000 + rng.random() * 1e6,
            endpoint=rng.choice(["predict", "predict_batch"]),
            prediction_id=rng.choice(TRICKY_TEXTS) + "x.y",
            label=rng.choice(TRICKY_TEXTS),
            confidence=rng.choice(floats),
            latency_ms=rng.choice(floats),
            input_chars=rng.randint(0, 10**6),
            token_count=rng.randint(0, 5000),
            known_tokens=0,
            probabilities=np.zeros(4),
            trace_id=rng.choice([0, rng.getrandbits(128)]),
            span_id=rng.getrandbits(64),
            text_field=text_field,
            observed=(rng.choice(floats), rng.random() < 0.5),
        )
        version = rng.choice(TRICKY_TEXTS)
        fields = {
            "event": "prediction",
            "endpoint": event.endpoint,
            "prediction_id": event.prediction_id,
            "model_version": version,
            "label": event.label,
            "confidence": event.confidence,
            "latency_ms": event.latency_ms,
            "input_chars": event.input_chars,
            "input_tokens": event.token_count,
            "oov_ratio": round(event.observed[0], 4),
            "empty_input": event.observed[1],
            **dict([text_field] if text_field else []),
        }
        ids = (event.trace_id, event.span_id)
        assert prediction_line(event, version) == event_line(event.created, "info", LOGGER, ids, fields)


def test_access_lines_are_event_lines_of_their_message():
    class Middleware:  # BentoML's access-log options
        has_request_content_type = has_request_content_length = False
        has_response_content_type = has_response_content_length = False

    middleware = Middleware()
    for i, text in enumerate(TRICKY_TEXTS):
        ids = (0, 0) if i % 2 else (2**127 + i, 2**63 + i)
        scope = {"scheme": "http", "method": "POST", "path": f"/{text}", "client": ("127.0.0.1", 5000)}
        item = (1_764_000_000.5 + i, ids, middleware, scope, (200, ()), 3.25)
        message = patches.access_message(middleware, scope, (200, ()), 3.25)
        assert message == f"127.0.0.1:5000 (scheme=http,method=POST,path=/{text}) (status=200) 3.250ms"
        expected = event_line(item[0], "info", "bentoml.access", ids, {"message": message})
        assert patches._access_line(item) == expected
        json.loads(expected)
