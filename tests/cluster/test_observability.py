"""The observability stack inside the real cluster, as `make cluster-up` installs it (conftest.py:
`observability`): the OpenTelemetry Collector DaemonSet and Prometheus from helm-config/ (each with its
test-only overlay, tests/cluster/overlays/), the service from manifests/.

Real: the collector tails the service pod's log file under /var/log/pods, receives its spans, asks the API
server for the pod's metadata (k8s_attributes) and pushes span metrics to Prometheus' OTLP receiver;
Prometheus finds the pod through the Kubernetes service discovery of its `kubernetes-pods` job, scrapes
it, scrapes the kubelet's cAdvisor through the API server and evaluates our rules. Loki and Tempo
(AGPL-3.0) are never run: the test suite's OTLP receivers take their addresses (stand-ins.yaml), and the
tests named `contract` check what those backends document they make of the exports
(tests/support/loki_contract.py).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support.cluster_node import NODE_NAME
from support.cluster_service import CONTAINER, NAMESPACE, SERVICE, at_rest
from support.cluster_stack import prometheus, promql
from support.dashboards import (
    DATASOURCES,
    dashboard_targets,
    exemplar_selectors,
    grafana_variables,
    provisioned,
)
from support.deploy_files import rules as shipped_rules
from support.loki_contract import Entry, ingested, select
from support.paths import REPO
from support.processes import poll_until
from support.stack import loki_index_attributes

PREDICTIONS_LOGGER = "newsgroups_classifier.predictions"
# The OpenTelemetry SDK's batch span processor exports every 5 s (its default schedule delay).
SPAN_EXPORT_DELAY = 5
TEXTS = {
    "rec.sport.hockey": "The goalie stopped every shot in overtime of the playoff game.",
    "rec.autos": "The dealer replaced the transmission and the brakes of my sedan.",
    "rec.motorcycles": "I ride my motorcycle with a helmet and leathers on the highway.",
    "rec.sport.baseball": "The pitcher threw a no-hitter and the shortstop hit a home run.",
}


def flush_interval() -> float:
    """How often the span_metrics connector flushes, in seconds (helm-config/opentelemetry-collector)."""
    values = yaml.safe_load((REPO / "helm-config" / "opentelemetry-collector" / "values.yaml").read_text())
    interval = values["config"]["connectors"]["span_metrics"]["metrics_flush_interval"]
    assert interval.endswith("s"), interval
    return float(interval[:-1])


@dataclass(frozen=True)
class Pod:
    name: str
    uid: str
    ip: str


@dataclass(frozen=True)
class Prediction:
    """The prediction sent with a known traceparent, to one pod, and what it answered."""

    trace_id: str
    pod: Pod
    answer: dict


def post(cluster, url: str, body: dict, *headers: str) -> tuple[int, dict]:
    out = cluster.curl(
        "--write-out", "\n%{http_code}", "-H", "Content-Type: application/json", *headers,
        "--data", json.dumps(body), url,
    ).stdout  # fmt: skip
    text, _, status = out.rpartition("\n")
    return int(status), json.loads(text)


def scraped_predictions(cluster, pod: Pod) -> float:
    """The pod's own count of predictions, read from its /metrics."""
    text = cluster.curl(f"http://{pod.ip}:3000/metrics").stdout
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "newsgroups_predictions_total"
    )


def wait_until_quiet(cluster, pod: Pod, seconds: float) -> None:
    """Poll until the pod has made no prediction for `seconds`."""
    last = {"count": None, "since": time.monotonic()}

    def quiet() -> bool:
        count = scraped_predictions(cluster, pod)
        if count != last["count"]:
            last.update(count=count, since=time.monotonic())
        return time.monotonic() - last["since"] >= seconds

    poll_until(
        quiet, timeout=seconds + 120, interval=1, what=f"{pod.name} to make no prediction for {seconds} s"
    )


@pytest.fixture(scope="module")
def prediction(deployed, observability) -> Prediction:
    """A prediction with a known traceparent, sent to one pod, then what every dashboard panel needs:
    feedback on it, a prediction of each class, a batch and a bad input."""
    cluster = deployed.cluster
    # At rest: no pod the HPA added after earlier load, which its scale-in could remove under this test.
    (pod, *_) = at_rest(cluster)
    pod = Pod(pod["metadata"]["name"], pod["metadata"]["uid"], pod["status"]["podIP"])
    url = f"http://{pod.ip}:3000"
    # The span_metrics connector gives exemplars to the first spans of each series in a flush interval
    # (max_per_data_point, default 5): once the pod's earlier spans are exported (the SDK's batch delay)
    # and flushed, the known prediction's span is the first of its interval.
    wait_until_quiet(cluster, pod, SPAN_EXPORT_DELAY + flush_interval())
    trace_id = secrets.token_hex(16)
    traceparent = f"traceparent: 00-{trace_id}-{secrets.token_hex(8)}-01"
    status, answer = post(cluster, f"{url}/predict", {"text": TEXTS["rec.sport.hockey"]}, "-H", traceparent)
    assert status == 200, answer
    feedback = {"prediction_id": answer["prediction_id"], "label": "rec.sport.hockey"}
    assert post(cluster, f"{url}/feedback", feedback)[0] == 200
    for text in TEXTS.values():
        assert post(cluster, f"{url}/predict", {"text": text})[0] == 200
    assert post(cluster, f"{url}/predict_batch", {"texts": list(TEXTS.values())})[0] == 200
    assert post(cluster, f"{url}/predict", {"text": "   "})[0] == 400
    return Prediction(trace_id, pod, answer)


# --- what Loki and Tempo get -------------------------------------------------------------------------


def loki_entries(observability) -> list[Entry]:
    """What Loki would hold: every record exported to its address, ingested as its OTLP endpoint does."""
    index = loki_index_attributes()
    return [ingested(record, index) for record in observability.loki().log_records()]


def entries_of(observability, trace_id: str) -> list[Entry]:
    """The trace's entries, once its prediction event is among them."""
    return poll_until(
        lambda: (
            (found := [e for e in loki_entries(observability) if e.metadata.get("trace_id") == trace_id])
            and any(e.labels.get("event") == "prediction" for e in found)
            and found
        ),
        timeout=90,
        interval=1,
        what=f"the prediction event of {trace_id} at Loki's address",
    )


def test_contract_loki_gets_the_prediction_event_with_its_trace_id_and_the_labels_queries_select_on(
    prediction, observability
):
    """Contract (Loki's OTLP ingestion): the collector's record of the prediction line, tailed from the
    pod's log file, has the request's trace id as TraceId (structured metadata trace_id) and exactly the
    labels Loki indexes, with the pod's name; k8s_attributes added the pod's metadata from the API."""
    pod = prediction.pod
    (event,) = [e for e in entries_of(observability, prediction.trace_id) if e.labels.get("event")]
    line = json.loads(event.line)
    assert line["prediction_id"] == prediction.answer["prediction_id"]
    assert line["trace_id"] == prediction.trace_id and event.metadata["span_id"] == line["span_id"]
    assert set(event.labels) == {name.replace(".", "_") for name in loki_index_attributes()}
    assert event.labels == {
        "service_name": SERVICE,
        "namespace": NAMESPACE,
        "pod": pod.name,
        "container": CONTAINER,
        "stream": "stdout",
        "level": "info",
        "logger": PREDICTIONS_LOGGER,
        "event": "prediction",
    }
    # The file the kubelet wrote, as the logsCollection preset reads it.
    log_file = rf"/var/log/pods/{NAMESPACE}_{pod.name}_{pod.uid}/{CONTAINER}/\d+\.log"
    assert re.fullmatch(log_file, event.metadata["log_file_path"]), event.metadata
    # The kubernetesAttributes preset: the pod's metadata, asked of the API server.
    assert {k: event.metadata.get(k) for k in ("k8s_pod_uid", "k8s_deployment_name", "k8s_node_name")} == {
        "k8s_pod_uid": pod.uid,
        "k8s_deployment_name": SERVICE,
        "k8s_node_name": NODE_NAME,
    }


def test_contract_the_derived_fields_lead_from_the_log_line_to_the_trace(prediction, observability):
    """Log -> trace: both derived fields of the Loki datasource find exactly the request's trace id."""
    by_label, in_line = DATASOURCES["loki"]["jsonData"]["derivedFields"]
    assert by_label["datasourceUid"] == in_line["datasourceUid"] == "tempo"
    regex = re.compile(provisioned(in_line["matcherRegex"]))
    for entry in entries_of(observability, prediction.trace_id):
        assert entry.metadata[by_label["matcherRegex"]] == prediction.trace_id
        assert regex.search(entry.line).group(1) == prediction.trace_id


def exported_spans(observability, trace_id: str) -> list:
    """The trace's spans, once its inference span and that span's parent (the server span) are there."""

    def spans():
        found = observability.tempo().trace(trace_id)
        inference = [s.parent_span_id for s in found if s.name == "inference"]
        return inference and inference[0] in {s.span_id for s in found} and found

    return poll_until(spans, timeout=60, interval=1, what=f"the spans of {trace_id} at Tempo's address")


def test_contract_tempo_gets_the_spans_with_the_pods_resource_attributes(prediction, observability):
    """Contract (Tempo's OTLP receiver): the collector forwards the request's server and inference spans
    with the resource attributes the Tempo datasource's queries map, and the pod's metadata that
    k8s_attributes asked the API server for."""
    pod = prediction.pod
    spans = exported_spans(observability, prediction.trace_id)
    inference = next(s for s in spans if s.name == "inference")
    server = next(s for s in spans if s.span_id == inference.parent_span_id)
    assert "predict" in server.name
    tempo = DATASOURCES["tempo"]["jsonData"]
    mapped = {tag["key"] for key in ("tracesToLogsV2", "tracesToMetrics") for tag in tempo[key]["tags"]}
    assert {key: inference.resource[key] for key in mapped} == {
        "service.name": SERVICE,
        "k8s.namespace.name": NAMESPACE,
        "k8s.pod.name": pod.name,
    }
    assert inference.resource["service.version"] == prediction.answer["model_version"]
    keys = ("k8s.pod.uid", "k8s.deployment.name", "k8s.node.name")
    assert {key: inference.resource.get(key) for key in keys} == {
        "k8s.pod.uid": pod.uid,
        "k8s.deployment.name": SERVICE,
        "k8s.node.name": NODE_NAME,
    }


def test_contract_the_traces_to_logs_query_finds_the_requests_log_lines(prediction, observability):
    """Trace -> logs (Loki's query semantics): the Tempo datasource's query, filled in from the exported
    span, selects the request's prediction event (one line per prediction) among everything Loki got."""
    settings = DATASOURCES["tempo"]["jsonData"]["tracesToLogsV2"]
    resource = exported_spans(observability, prediction.trace_id)[0].resource
    tags = ", ".join(f'{tag["value"]}="{resource[tag["key"]]}"' for tag in settings["tags"])
    query = (
        provisioned(settings["query"])
        .replace("${__tags}", tags)
        .replace("${__trace.traceId}", prediction.trace_id)
    )
    entries_of(observability, prediction.trace_id)
    lines = [json.loads(entry.line) for entry in select(loki_entries(observability), query)]
    assert [(line["trace_id"], line["event"]) for line in lines] == [(prediction.trace_id, "prediction")]


# --- Prometheus --------------------------------------------------------------------------------------


def exemplars(cluster, selector: str) -> list[dict]:
    now = time.time()
    series = prometheus(cluster, "query_exemplars", query=selector, start=str(now - 900), end=str(now))
    return [{**e, "series": s["seriesLabels"]} for s in series for e in s["exemplars"]]


def test_prometheus_discovers_the_pod_and_scrapes_its_counters(prediction, deployed):
    """The `kubernetes-pods` job finds the pod by its annotations and labels its series with the pod;
    the pod's prediction count, taken after the traffic, reaches Prometheus."""
    cluster, pod = deployed.cluster, prediction.pod
    labels = f'namespace="{NAMESPACE}", pod="{pod.name}", app_kubernetes_io_name="{SERVICE}"'
    (up,) = poll_until(
        lambda: promql(cluster, f'up{{job="kubernetes-pods", {labels}}} == 1'), timeout=60, what="the target"
    )
    assert up["metric"]["instance"] == f"{pod.ip}:3000"
    count = scraped_predictions(cluster, pod)
    assert count >= 1 + len(TEXTS) + len(TEXTS)  # the known prediction, one per class, the batch
    poll_until(
        lambda: promql(cluster, f"sum(newsgroups_predictions_total{{{labels}}}) >= {count}"),
        timeout=60,
        what=f"{count} predictions of {pod.name} in Prometheus",
    )


def test_the_span_metrics_reach_prometheus_with_an_exemplar_of_the_trace(prediction, deployed):
    """Exemplar -> trace: the collector's span metrics (OTLP into Prometheus) carry the request's trace
    id as an exemplar on the inference span's latency, for its pod; the exemplar panels show it."""
    cluster, pod = deployed.cluster, prediction.pod
    (destination,) = DATASOURCES["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    inference = f'span_name="inference", k8s_pod_name="{pod.name}"'
    selector = f"traces_span_metrics_duration_milliseconds_bucket{{{inference}}}"
    try:
        (found, *_) = poll_until(
            lambda: [
                e
                for e in exemplars(cluster, selector)
                if e["labels"][destination["name"]] == prediction.trace_id
            ],
            timeout=90,
            interval=2,
        )
    except AssertionError:
        stored = [
            (e["series"]["le"], e["labels"], e["value"], e["timestamp"]) for e in exemplars(cluster, selector)
        ]
        raise AssertionError(
            f"no exemplar of {selector} has trace id {prediction.trace_id} at {time.time()}; stored: {stored}"
        ) from None
    assert found["series"]["service_name"] == SERVICE and found["series"]["k8s_namespace_name"] == NAMESPACE
    for where, selectors in exemplar_selectors():
        for panel_selector in selectors:
            trace_ids = {e["labels"].get(destination["name"]) for e in exemplars(cluster, panel_selector)}
            assert prediction.trace_id in trace_ids, f"{where}: {panel_selector}"


def test_the_traces_to_metrics_queries_return_data(prediction, deployed, observability):
    """Trace -> metrics: the Tempo datasource's queries, filled in from the exported span, return data."""
    settings = DATASOURCES["tempo"]["jsonData"]["tracesToMetrics"]
    resource = exported_spans(observability, prediction.trace_id)[0].resource
    tags = ", ".join(f'{tag["value"]}="{resource[tag["key"]]}"' for tag in settings["tags"])
    for query in settings["queries"]:
        expr = provisioned(query["query"]).replace("$__tags", tags)
        assert poll_until(lambda expr=expr: promql(deployed.cluster, expr), timeout=90, what=expr), query[
            "name"
        ]


def test_prometheus_loads_and_evaluates_our_rules(deployed):
    shipped = {rule.get("alert") or rule["record"] for rule in shipped_rules()}
    groups = poll_until(
        lambda: (
            (g := prometheus(deployed.cluster, "rules")["groups"])
            and all(group["lastEvaluation"][:4] != "0001" for group in g)
            and g
        ),
        timeout=60,
        what="every rule group evaluated",
    )
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == shipped
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_the_kubelet_serves_cpu_and_memory_series_of_the_pod(prediction, deployed):
    """cAdvisor, scraped through the API server: what the dashboards' saturation panels read."""
    labels = f'namespace="{NAMESPACE}", pod="{prediction.pod.name}", container="{CONTAINER}"'
    for metric in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes"):
        (series,) = poll_until(
            lambda metric=metric: promql(deployed.cluster, f"{metric}{{{labels}}}"), timeout=90, what=metric
        )
        assert float(series["value"][1]) > 0, series


def queries_without_data(cluster, observability) -> list[str]:
    entries = loki_entries(observability)
    empty = []
    for where, uid, target in dashboard_targets():
        query = grafana_variables(target["expr"])
        if uid == "prometheus":
            found = promql(cluster, query)
        else:  # contract: the streams the query reads, as Loki would select them from what it got
            found = select(entries, re.search(r"\{[^}]*\}", query).group(0))
        if not found:
            empty.append(f"{where}: {query}")
    return empty


def test_every_dashboard_query_returns_data(prediction, deployed, observability):
    """Every panel's query, the saturation panels' cAdvisor series included (Loki's by contract)."""
    cluster = deployed.cluster
    # Rates need two scrapes and recording rules an evaluation after the traffic: wait, then insist.
    try:
        poll_until(lambda: not queries_without_data(cluster, observability), timeout=120, interval=5)
    except AssertionError:
        pass
    empty = queries_without_data(cluster, observability)
    assert not empty, "queries without data:\n" + "\n".join(empty)
