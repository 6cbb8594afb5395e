"""The model of Loki the contract tests use (tests/support/loki_contract.py) follows Loki's documented
behaviour, and refuses what it does not model instead of answering it wrongly."""

from __future__ import annotations

import pytest

from support.loki_contract import Entry, ingested, query_range, select
from support.otlp_receiver import ReceivedLog

RECORD = ReceivedLog(
    body='{"event":"prediction","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}',
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    span_id="00f067aa0ba902b7",
    attributes={"log.iostream": "stdout"},
    resource={"service.name": "svc", "namespace": "ns", "k8s.pod.uid": "u1", "event": "prediction"},
    severity_text="info",
    time_ns=10,
)


def test_ingestion_indexes_the_configured_attributes_and_keeps_the_rest_as_metadata():
    entry = ingested(RECORD, ["service.name", "namespace", "event", "pod"])
    assert entry.labels == {"service_name": "svc", "namespace": "ns", "event": "prediction"}
    assert entry.metadata == {
        "k8s_pod_uid": "u1",
        "log_iostream": "stdout",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "severity_text": "info",
    }
    assert entry.line == RECORD.body


ENTRIES = [
    Entry({"namespace": "ns", "event": "prediction"}, {"trace_id": "a" * 32}, '{"event":"prediction"} x', 10),
    Entry({"namespace": "ns", "event": "feedback"}, {"trace_id": "b" * 32}, '{"event":"feedback"}', 20),
    Entry({"namespace": "other"}, {}, "plain", 30),
]


@pytest.mark.parametrize(
    "query, times",
    [
        ('{namespace="ns"}', [10, 20]),
        ('{namespace=~"n.*"}', [10, 20]),
        ('{namespace="ns", event!="feedback"}', [10]),
        ('{namespace=~".+"} |= "x"', [10]),
        ('{namespace=~".+"} != "x"', [20, 30]),
        ('{namespace="ns"} |~ `"event":"(prediction|feedback)"`', [10, 20]),
        ('{namespace="ns"} | trace_id = "' + "b" * 32 + '"', [20]),  # structured metadata
        ('{namespace="ns"} | event = "prediction"', [10]),  # a label, in a label filter
    ],
)
def test_queries_select_as_loki_does(query, times):
    assert [entry.time_ns for entry in select(ENTRIES, query)] == times


@pytest.mark.parametrize(
    "query", ['{namespace="ns"} | json', 'count_over_time({namespace="ns"}[5m])', "{ns}"]
)
def test_what_the_model_does_not_know_is_an_error(query):
    with pytest.raises(ValueError):
        select(ENTRIES, query)


def test_query_range_pages_from_start_inclusive_to_end_exclusive():
    params = {"query": '{namespace=~".+"}', "start": "10", "end": "30", "limit": "1", "direction": "forward"}
    (stream,) = query_range(ENTRIES, params)["data"]["result"]
    assert stream["values"] == [["10", ENTRIES[0].line]]
    assert stream["stream"] == {"namespace": "ns", "event": "prediction", "trace_id": "a" * 32}
    backward = query_range(ENTRIES, {**params, "limit": "5", "direction": "backward"})["data"]["result"]
    assert [value[0] for stream in backward for value in stream["values"]] == ["20", "10"]
