"""Every LogQL string we ship parses: the dashboards' queries, the Tempo datasource's traces-to-logs query,
the export's query and Promtail's match selector. No permissive server here answers LogQL, so the check is
syntax only, with @grafana/lezer-logql, the LogQL grammar Grafana's query editor parses with
(tests/deploy/logql, built by `make deploy-tools`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from newsgroups_classifier import export
from support.charts import run
from support.deploy_files import dashboards, datasources, merged
from support.processes import built_tool

# Grafana's variables, filled in as Grafana does before a query runs.
VARIABLES = {
    "$__auto": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$${__tags}": 'namespace="newsgroups", pod="newsgroups-classifier-0"',
    "$${__trace.traceId}": "4bf92f3577b34da6a3ce929d0e0e4736",
}


@pytest.fixture(scope="module")
def logql() -> Path:
    return built_tool("tests/deploy/tools.sh", "logql", "make deploy-tools")


def filled(query: str) -> str:
    for name, value in VARIABLES.items():
        query = query.replace(name, value)
    assert "$" not in query, f"unknown variable in {query}"
    return query


def shipped_logql(releases) -> dict[str, str]:
    queries = {
        f"{name} / {panel['title']}": filled(target["expr"])
        for name, board in dashboards().items()
        for panel in board["panels"]
        for target in panel.get("targets", [])  # a row has none
        if target["datasource"]["type"] == "loki"
    }
    traces_to_logs = datasources(releases)["tempo"]["jsonData"]["tracesToLogsV2"]["query"]
    queries["Tempo datasource / traces to logs"] = filled(traces_to_logs)
    queries["make export-feedback"] = f"{export.DEFAULT_SELECTOR} {export.EVENT_FILTER}"
    stages = merged(releases["promtail"])["config"]["snippets"]["pipelineStages"]
    for stage in stages:
        if "match" in stage:
            queries["Promtail match stage"] = stage["match"]["selector"]
    return queries


def syntax_errors(logql: Path, queries: list[str]) -> dict[str, list[int]]:
    result = run([logql], input=json.dumps(queries))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_logql_string_we_ship_parses(releases, logql):
    queries = shipped_logql(releases)
    assert len(queries) >= 8, queries
    errors = syntax_errors(logql, list(queries.values()))
    broken = {where: query for where, query in queries.items() if errors[query]}
    assert not broken, "LogQL syntax errors (offsets in the output of the check):\n" + "\n".join(
        f"{where}: {query} at {errors[query]}" for where, query in broken.items()
    )


@pytest.mark.parametrize(
    "query",
    [
        '{namespace="newsgroups" |= "x"',
        "{namespace=newsgroups}",
        'sum by (label) (count_over_time({namespace="newsgroups"} [5m)',
        '{namespace="newsgroups"} | trace_id = ',
    ],
)
def test_the_check_reports_a_broken_query(logql, query):
    assert syntax_errors(logql, [query])[query]
