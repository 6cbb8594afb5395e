"""End to end: the files users deploy produce a working drilldown across logs, traces and metrics.

Real: the service, the OpenTelemetry Collector (tailing the service's container log file, receiving its
spans) and Prometheus (scraping the service, receiving the collector's span metrics). Loki and Tempo
(AGPL-3.0) are never run: the collector's exports to their addresses are received by real OTLP receivers
and checked against what those backends document (the tests named `contract`, see
tests/support/loki_contract.py).

Every test reads the same module-scoped traffic against one stack (see conftest.py) and polls for what it
needs, in any order; teardown is checked when the stack fixture stops every process it started.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from datetime import datetime

import pytest
import requests
import yaml

from support import stack as st
from support.dashboards import (
    DATASOURCES,
    dashboard_targets,
    exemplar_selectors,
    grafana_variables,
    provisioned,
)
from support.deploy_files import rules as shipped_rules
from support.load_driver import traceparent
from support.loki_contract import select
from support.processes import poll_until

# Series that exist only in a cluster: the kubelet's cAdvisor.
CLUSTER_ONLY_METRICS = ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes")
PREDICTIONS_LOGGER = "newsgroups_classifier.predictions"


def promql(stack, query: str) -> list[dict]:
    response = requests.get(f"{stack.prometheus.url}/api/v1/query", params={"query": query}, timeout=30)
    assert response.status_code == 200, f"{query}: {response.text}"
    return response.json()["data"]["result"]


def exemplars(stack, selector: str) -> list[dict]:
    now = time.time()
    response = requests.get(
        f"{stack.prometheus.url}/api/v1/query_exemplars",
        params={"query": selector, "start": now - 900, "end": now},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return [e for series in response.json()["data"] for e in series["exemplars"]]


@pytest.fixture(scope="module")
def traffic(stack, documents) -> list[dict]:
    """Predictions with known trace ids (feedback for some), root requests, batches and bad input, sent
    once Prometheus has scraped the service: requests before its first scrape never show as an increase,
    and rates over them (the SLOs' error ratios among them) would stay 0 or empty."""
    poll_until(
        lambda: promql(stack, 'newsgroups_http_requests_total{route="/predict"}'),
        timeout=60,
        what="the service's first scrape",
    )
    url, sent = stack.service.url, []
    for i in range(40):
        label = sorted(documents)[i % 4]
        trace_id = secrets.token_hex(16)
        response = requests.post(
            f"{url}/predict", json={"text": documents[label][i]}, headers=traceparent(trace_id), timeout=10
        )
        assert response.status_code == 200, response.text
        sent.append({"trace_id": trace_id, "true_label": label, **response.json()})
    for record in sent[::3]:
        feedback = {"prediction_id": record["prediction_id"], "label": record["true_label"]}
        assert requests.post(f"{url}/feedback", json=feedback, timeout=10).status_code == 200
    for i in range(10):  # no incoming trace: root server spans
        assert requests.post(
            f"{url}/predict",
            data=documents["rec.autos"][50 + i].encode(),
            headers={"Content-Type": "text/plain"},
            timeout=10,
        ).ok
    batch = {"texts": [documents["rec.motorcycles"][i] for i in range(8)]}
    assert requests.post(f"{url}/predict_batch", json=batch, timeout=10).ok
    assert (
        requests.post(
            f"{url}/predict", data=b"  ", headers={"Content-Type": "text/plain"}, timeout=10
        ).status_code
        == 400
    )
    return sent


@pytest.mark.parametrize("log_agent", ["opentelemetry-collector", "promtail"])
def test_the_built_collector_accepts_the_shipped_configuration(helm, otelcol, tmp_path, log_agent):
    """Every component of the rendered configuration (either log agent's variant) is in the build under the
    same name, and the collector validates the configuration."""
    config = st.collector_config(helm, LOG_AGENT=log_agent)
    listed = yaml.safe_load(subprocess.run([otelcol, "components"], capture_output=True, check=True).stdout)
    kinds = ("receivers", "processors", "exporters", "connectors", "extensions")
    built = {kind: {component["name"] for component in listed[kind] or []} for kind in kinds}
    for kind, names in built.items():
        used = {name.split("/")[0] for name in config.get(kind) or {}}
        assert used <= names, f"{kind} not in the build: {used - names}"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [otelcol, "validate", f"--config={path}"], capture_output=True, text=True, env=st.COLLECTOR_ENV
    )
    assert result.returncode == 0, result.stdout + result.stderr


def prediction_entries(stack, traffic) -> dict[str, list]:
    """Loki's entries (as ingested from the collector's export) of each request, by trace id."""
    wanted = {r["trace_id"] for r in traffic}

    def found():
        by_trace = {}
        for entry in stack.loki_entries():
            if entry.metadata.get("trace_id") in wanted:
                by_trace.setdefault(entry.metadata["trace_id"], []).append(entry)
        events = {t for t, entries in by_trace.items() if any(e.labels.get("event") for e in entries)}
        return by_trace if events == wanted else None

    return poll_until(
        found, timeout=90, interval=1, what="every request's prediction event at Loki's address"
    )


def test_contract_loki_gets_each_prediction_with_its_trace_id_and_labels(stack, traffic):
    """Contract (Loki's OTLP ingestion): the collector's record of each prediction line has the request's
    trace id as TraceId (Loki's trace_id structured metadata) and the resource attributes Loki indexes."""
    by_trace = prediction_entries(stack, traffic)
    labels = {name.replace(".", "_") for name in st.loki_index_attributes()}
    for record in traffic:
        (event,) = [e for e in by_trace[record["trace_id"]] if e.labels.get("event") == "prediction"]
        line = json.loads(event.line)
        assert line["prediction_id"] == record["prediction_id"] and line["trace_id"] == record["trace_id"]
        assert event.metadata["span_id"] == line["span_id"]
        assert set(event.labels) == labels, "the labels differ from Promtail's (helm-config/loki/values.yaml)"
        assert event.labels == {
            "service_name": st.APP,
            "namespace": st.NAMESPACE,
            "pod": st.POD,
            "container": st.APP,
            "stream": "stdout",
            "level": "info",
            "logger": PREDICTIONS_LOGGER,
            "event": "prediction",
        }
    indexed = {name for entry in stack.loki_entries() for name in entry.labels}
    assert not indexed & {"trace_id", "span_id"}, "an id must never be a label"


def test_the_derived_fields_find_exactly_the_trace_id(stack, traffic):
    by_label, in_line = DATASOURCES["loki"]["jsonData"]["derivedFields"]
    assert by_label["datasourceUid"] == in_line["datasourceUid"] == "tempo"
    regex = re.compile(provisioned(in_line["matcherRegex"]))
    for trace_id, entries in prediction_entries(stack, traffic).items():
        assert {entry.metadata[by_label["matcherRegex"]] for entry in entries} == {trace_id}
        assert {regex.search(entry.line).group(1) for entry in entries} == {trace_id}


def exported_trace(stack, trace_id: str) -> list:
    """The trace once its inference span and the server span above it are in (the server span ends
    last, so it can come in a later export)."""

    def complete() -> list:
        spans = stack.tempo.trace(trace_id)
        ids = {span.span_id for span in spans}
        inference = [span for span in spans if span.name == "inference"]
        return spans if inference and inference[0].parent_span_id in ids else []

    return poll_until(complete, timeout=30, what=f"the server and inference spans of {trace_id}")


def test_contract_tempo_gets_the_trace_with_server_and_inference_spans(stack, traffic):
    """Contract (Tempo's OTLP receiver): the collector forwards the request's server span and inference
    spans with the resource attributes the Tempo datasource's queries map (service.name, k8s.*)."""
    record = traffic[0]
    spans = exported_trace(stack, record["trace_id"])
    inference = next(s for s in spans if s.name == "inference")
    server = next(s for s in spans if s.span_id == inference.parent_span_id)
    assert server.name == "POST /predict"
    assert inference.resource["service.version"] == record["model_version"]
    tempo = DATASOURCES["tempo"]["jsonData"]
    mapped = {tag["key"] for key in ("tracesToLogsV2", "tracesToMetrics") for tag in tempo[key]["tags"]}
    assert {key: inference.resource[key] for key in mapped} == {
        "service.name": st.APP,
        "k8s.namespace.name": st.NAMESPACE,
        "k8s.pod.name": st.POD,
    }


def test_contract_the_traces_to_logs_query_returns_the_requests_log_lines(stack, traffic):
    """Contract (Loki's query semantics): the Tempo datasource's query, filled in from the exported span,
    selects the request's line (its prediction event: one line per prediction) among everything Loki got."""
    settings = DATASOURCES["tempo"]["jsonData"]["tracesToLogsV2"]
    assert settings["datasourceUid"] == "loki" and settings["customQuery"]
    record = traffic[1]
    prediction_entries(stack, traffic)
    resource = exported_trace(stack, record["trace_id"])[0].resource
    tags = ", ".join(f'{tag.get("value") or tag["key"]}="{resource[tag["key"]]}"' for tag in settings["tags"])
    query = (
        provisioned(settings["query"])
        .replace("${__tags}", tags)
        .replace("${__trace.traceId}", record["trace_id"])
    )
    lines = [json.loads(entry.line) for entry in select(stack.loki_entries(), query)]
    assert [(line["trace_id"], line["event"]) for line in lines] == [(record["trace_id"], "prediction")]


def test_prometheus_has_the_span_metrics_with_exemplars_of_the_requests(stack, traffic):
    poll_until(
        lambda: promql(stack, "sum(newsgroups_predictions_total) >= 58"), timeout=60, what="scraped counts"
    )
    wanted = {r["trace_id"] for r in traffic}
    (destination,) = DATASOURCES["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    # The span_metrics connector flushes every 15 s; its first flush of a new series reports 0.
    found = poll_until(
        lambda: (
            {
                e["labels"][destination["name"]]
                for e in exemplars(
                    stack, 'traces_span_metrics_duration_milliseconds_bucket{span_name="inference"}'
                )
            }
            & wanted
        ),
        timeout=90,
        interval=2,
        what="an exemplar of the inference span metrics carrying one of our trace ids",
    )
    assert found
    # Each request's inference span counted (from the second flush of the series on).
    poll_until(
        lambda: promql(stack, 'sum(traces_span_metrics_calls_total{span_name="inference"}) >= 40'),
        timeout=60,
        what="the inference spans counted",
    )


def test_the_latency_exemplars_the_dashboards_show_link_to_the_requests(stack, traffic):
    wanted = {r["trace_id"] for r in traffic}
    panels = exemplar_selectors()
    assert panels, "no dashboard panel shows exemplars"
    for where, selectors in panels:
        assert selectors, where
        for selector in selectors:
            trace_ids = {e["labels"].get("trace_id") for e in exemplars(stack, selector)}
            assert trace_ids & wanted, f"{where}: no exemplar of {selector} links to a request"


def test_the_traces_to_metrics_queries_return_data(stack, traffic):
    tempo = DATASOURCES["tempo"]["jsonData"]["tracesToMetrics"]
    resource = exported_trace(stack, traffic[2]["trace_id"])[0].resource
    tags = ", ".join(f'{tag["value"]}="{resource[tag["key"]]}"' for tag in tempo["tags"])
    for query in tempo["queries"]:
        expr = provisioned(query["query"]).replace("$__tags", tags)
        assert poll_until(lambda expr=expr: promql(stack, expr), timeout=60, what=expr), query["name"]


def queries_without_data(stack) -> list[str]:
    empty = []
    for where, uid, target in dashboard_targets():
        expr = target["expr"]
        if any(metric in expr for metric in CLUSTER_ONLY_METRICS):
            continue
        query = grafana_variables(expr)
        if uid == "prometheus":
            found = promql(stack, query)
        else:  # contract: the streams the query reads, as Loki would select them from what it got
            found = select(stack.loki_entries(), re.search(r"\{[^}]*\}", query).group(0))
        if not found:
            empty.append(f"{where}: {query}")
    return empty


def test_every_dashboard_query_returns_data(stack, traffic):
    # Recording rules over the traffic need an evaluation or two first: wait for them, then insist.
    try:
        poll_until(lambda: not queries_without_data(stack), timeout=120, interval=5, what="dashboard data")
    except AssertionError:
        pass
    empty = queries_without_data(stack)
    assert not empty, "queries without data:\n" + "\n".join(empty)


def rule_states(stack) -> dict[str, str]:
    groups = requests.get(f"{stack.prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    return {
        rule["name"]: rule.get("state", "")
        for group in groups
        for rule in group["rules"]
        if rule["type"] == "alerting"
    }


def test_alert_rules_load_and_skewed_traffic_drives_the_drift_alert(stack, traffic, documents):
    groups = requests.get(f"{stack.prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    alerting = {rule["name"] for rule in rules if rule["type"] == "alerting"}
    shipped = {rule["alert"] for rule in shipped_rules() if "alert" in rule}
    assert alerting == shipped
    assert all(rule["health"] != "err" for rule in rules), [r.get("lastError") for r in rules]
    # increase() counts from a series' first scrape: every class's counter is scraped before the traffic.
    poll_until(
        lambda: len(promql(stack, "newsgroups_predictions_total")) >= len(documents),
        timeout=60,
        what="every class's prediction counter in Prometheus",
    )
    # Normal traffic: a balanced sample of held-out documents does not trip the drift alerts.
    for i in range(200):
        label = sorted(documents)[i % 4]
        requests.post(
            f"{stack.service.url}/predict", json={"text": documents[label][100 + i // 4]}, timeout=10
        )
    poll_until(
        lambda: promql(stack, "newsgroups:predictions:increase1h >= 200"),
        timeout=90,
        interval=3,
        what="the normal traffic in the recording rules",
    )
    evaluated = time.time()
    # One more evaluation of the alerting rules on that data.
    poll_until(
        lambda: last_evaluation(stack, "NewsgroupsClassDrift") > evaluated, timeout=60, what="an evaluation"
    )
    assert rule_states(stack)["NewsgroupsClassDrift"] == "inactive"
    # Prior shift: hockey only.
    hockey = documents["rec.sport.hockey"]
    for i in range(400):
        requests.post(f"{stack.service.url}/predict", json={"text": hockey[i % len(hockey)]}, timeout=10)
    poll_until(
        lambda: rule_states(stack)["NewsgroupsClassDrift"] in ("pending", "firing"),
        timeout=120,
        interval=3,
        what="the class drift alert to be pending",
    )


def last_evaluation(stack, alert: str) -> float:
    """When Prometheus last evaluated the group holding `alert` (seconds since the epoch)."""
    groups = requests.get(f"{stack.prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    (group,) = [g for g in groups if any(rule["name"] == alert for rule in g["rules"])]
    return datetime.fromisoformat(group["lastEvaluation"].replace("Z", "+00:00")).timestamp()
