"""Every PromQL expression we ship (dashboards, rules, Grafana's trace-to-metrics queries) parses with the
Prometheus version the chart deploys, and every metric and label it selects exists where it says it does."""

from __future__ import annotations

import re

import promql_parser
import pytest
import yaml

from support.charts import run
from support.deploy_files import dashboards, datasources, exposed_series, find_manifest, merged, rules

# Grafana's macros and our dashboard variable, replaced by values of the right type before parsing.
MACROS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$model_version": ".*",
    "$$__tags": 'service_name="newsgroups-classifier"',  # tracesToMetrics' tag service.name -> service_name
}


def substitute(expr: str) -> str:
    for macro, value in sorted(MACROS.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(macro, value)
    assert "$" not in expr.replace('"$1"', ""), f"unknown variable in {expr}"
    return expr


def dashboard_expressions() -> dict[str, str]:
    return {
        f"{name} / {panel['title']} / {target['refId']}": substitute(target["expr"])
        for name, board in dashboards().items()
        for panel in board["panels"]
        for target in panel.get("targets", [])  # a row has none
        if target["datasource"]["type"] == "prometheus"
    }


def grafana_expressions(releases) -> dict[str, str]:
    queries = datasources(releases)["tempo"]["jsonData"]["tracesToMetrics"]["queries"]
    return {f"Tempo datasource / {query['name']}": substitute(query["query"]) for query in queries}


def rule_expressions() -> dict[str, str]:
    return {rule.get("alert") or rule["record"]: rule["expr"] for rule in rules()}


def all_expressions(releases) -> dict[str, str]:
    return {**dashboard_expressions(), **grafana_expressions(releases), **rule_expressions()}


def variable_queries() -> list[str]:
    return [
        v["query"]["query"]
        for board in dashboards().values()
        for v in board["templating"]["list"]
        if v.get("type") == "query"
    ]


def test_every_expression_parses_with_promtool(releases, promtool, tmp_path):
    expressions = {**dashboard_expressions(), **grafana_expressions(releases)}
    assert len(expressions) >= 30
    check = {
        "groups": [
            {
                "name": "shipped-queries",
                "rules": [
                    {"record": f"query_{i}", "expr": expr} for i, expr in enumerate(expressions.values())
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(check))
    result = run([promtool, "check", "rules", path])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_expression(promtool, tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "g",
                        "rules": [
                            {
                                "record": "broken",
                                "expr": "sum by (le) (rate(newsgroups_predictions_total[5m])",
                            }
                        ],
                    }
                ]
            }
        )
    )
    assert run([promtool, "check", "rules", path]).returncode != 0


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: matcher op}) of every vector selector."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            matchers = {m.name: str(m.op) for m in node.matchers.matchers}
            found.append((node.name or "", matchers))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def target_labels(releases) -> set[str]:
    """Labels the chart's `kubernetes-pods` job puts on every series it scrapes from our pods."""
    job = merged(releases["prometheus"])["scrapeConfigs"]["kubernetes-pods"]
    labels = {
        rule["target_label"]
        for rule in job["relabel_configs"]
        if "target_label" in rule and not rule["target_label"].startswith("__")
    }
    assert any(rule.get("regex") == "__meta_kubernetes_pod_label_(.+)" for rule in job["relabel_configs"])
    pod_labels = find_manifest("Deployment", "newsgroups-classifier")["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels | {re.sub(r"[^a-zA-Z0-9_]", "_", label) for label in pod_labels} | {"job", "instance"}


# Series that do not come from the service, and where they come from instead.
CADVISOR_LABELS = {"namespace", "pod", "container", "id", "image", "name", "cpu", "instance", "job"}


def other_sources(releases) -> dict[str, set[str] | None]:
    """Metric name prefix -> the labels it has (None: not checked), for series scraped from elsewhere."""
    prometheus = merged(releases["prometheus"])
    tempo = merged(releases["tempo"])["tempo"]
    sources: dict[str, set[str] | None] = {"up": target_labels(releases)}  # Prometheus' own series per target
    if prometheus["scrapeConfigs"]["kubernetes-nodes-cadvisor"]["enabled"]:
        sources["container_"] = CADVISOR_LABELS
    if "service-graphs" in tempo["overrides"]["defaults"]["metrics_generator"]["processors"]:
        sources["traces_service_graph_"] = None  # Grafana's service map reads them, no query of ours
    # The collector's span metrics through Prometheus' OTLP receiver: the connector's dimensions, job and
    # instance from the resource, and the resource attributes Prometheus promotes.
    promoted = prometheus["server"]["otlp"]["promote_resource_attributes"]
    span_labels = {"service_name", "span_name", "span_kind", "status_code", "le", "job", "instance"}
    sources["traces_span_metrics_"] = span_labels | {re.sub(r"[^a-zA-Z0-9_]", "_", a) for a in promoted}
    return sources


def recorded() -> dict[str, set[str]]:
    """Recording rule name -> the labels of its series: the rule's static labels plus its outermost `by`
    clause, or else the labels of the recorded series it is computed from."""
    records = [rule for rule in rules() if "record" in rule]
    names = {rule["record"] for rule in records}

    def labels_of(rule: dict) -> set[str]:
        by = re.findall(r"\bby \(([^)]*)\)", rule["expr"])
        if by:
            found = {label.strip() for label in by[0].split(",")}
        elif not selectors(rule["expr"]):  # a constant, e.g. an SLO's objective: vector(0.995)
            found = set()
        else:
            sources = [name for name, _ in selectors(rule["expr"]) if name in names]
            assert sources, f"{rule['record']}: cannot tell its labels"
            found = set().union(*(labels_of(r) for r in records if r["record"] == sources[0]))
        return found | set(rule.get("labels", {}))

    found: dict[str, set[str]] = {}
    for rule in records:
        found.setdefault(rule["record"], set()).update(labels_of(rule))
    return found


def test_every_metric_and_label_used_exists(releases, traffic):
    exposed = exposed_series(traffic.metrics)
    targets = target_labels(releases)
    sources = other_sources(releases)
    recordings = recorded()
    problems = []
    expressions = {**all_expressions(releases), **{f"variable {q}": q for q in variable_queries()}}
    for where, expr in expressions.items():
        if where.startswith("variable "):
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", expr)
            used = [(match.group(1), {match.group(2): "MatchOp.Equal"})]
        else:
            used = selectors(expr)
        for name, matchers in used:
            labels = set(matchers) - {"__name__"}
            if name in exposed:
                known = set().union(*exposed[name]) | targets
            elif name in recordings:
                known = recordings[name]
            elif source := next(
                (p for p in sources if name == p or name.startswith(p) and p.endswith("_")), None
            ):
                known = sources[source]
            else:
                problems.append(f"{where}: {name or matchers} is not exposed by the service nor recorded")
                continue
            if known is not None and labels - known:
                problems.append(f"{where}: {name} has no label {sorted(labels - known)}")
    assert not problems, "\n".join(problems)


def test_metric_check_flags_a_misspelled_metric(releases, traffic):
    exposed = exposed_series(traffic.metrics)
    ((name, _),) = selectors("rate(newsgroups_prediction_total[5m])")
    assert name not in exposed and name not in recorded()


@pytest.mark.parametrize(
    "histogram",
    [
        "newsgroups_prediction_confidence",
        "newsgroups_http_request_duration_seconds",
        "newsgroups_batch_size",
    ],
)
def test_histograms_used_by_dashboards_are_exposed_as_histograms(traffic, histogram):
    assert re.search(rf"^# TYPE {histogram} histogram$", traffic.metrics, re.M)
    assert f"{histogram}_bucket{{" in traffic.metrics
