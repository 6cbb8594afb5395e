"""What Grafana runs, from the files we ship, for the e2e and cluster tiers: the provisioned datasources and
every dashboard panel's query, with Grafana's variables filled in."""

from __future__ import annotations

import json
import re

import yaml

from support.paths import REPO

GRAFANA = yaml.safe_load((REPO / "helm-config" / "grafana" / "values.yaml").read_text())
DATASOURCES = {d["uid"]: d for d in GRAFANA["datasources"]["datasources.yaml"]["datasources"]}


def provisioned(text: str) -> str:
    """A string from a provisioning file as Grafana sees it: `$$` escapes a literal `$`."""
    return text.replace("$$", "$")


# The Loki derived field that finds a trace id in a log line's text (the other matches the trace_id
# structured metadata): what leads from any line of ours to its trace.
(_IN_LINE,) = [f for f in DATASOURCES["loki"]["jsonData"]["derivedFields"] if f.get("matcherType") == "regex"]
TRACE_ID_IN_LINE = re.compile(provisioned(_IN_LINE["matcherRegex"]))


def dashboard_targets() -> list[tuple[str, str, dict]]:
    """(where, datasource uid, target) of every query of every dashboard panel."""
    targets = []
    for path in sorted((REPO / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                uid = (target.get("datasource") or panel.get("datasource"))["uid"]
                targets.append((f"{path.name}: {panel['title']}", uid, target))
    return targets


def grafana_variables(query: str) -> str:
    """Fill in what Grafana fills in: dashboard variables (all values) and its interval macros."""
    for name, value in {
        "$model_version": ".*",
        "$__rate_interval": "1m",
        "$__interval": "1m",
        "$__range": "15m",
        "$__auto": "1m",
    }.items():
        query = query.replace(name, value)
    return query


def exemplar_selectors() -> list[tuple[str, list[str]]]:
    """(where, its histogram bucket selectors) of every panel query that shows exemplars."""
    return [
        (where, re.findall(r"\b(\w+_bucket\{[^}]*\})", grafana_variables(target["expr"])))
        for where, _, target in dashboard_targets()
        if target.get("exemplar")
    ]
