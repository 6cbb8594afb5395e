"""The observability stack in the cluster tier, asked through its Services from inside the node's network
namespace: Prometheus' HTTP API and Alertmanager's."""

from __future__ import annotations

import json

OBSERVABILITY = "observability"
# The Services the Prometheus chart makes for the server and its Alertmanager, and their ports.
PROMETHEUS = ("prometheus-server", 80)
ALERTMANAGER = ("prometheus-alertmanager", 9093)


def service_url(cluster, service: tuple[str, int]) -> str:
    name, port = service
    ip = cluster.kubectl(
        "-n", OBSERVABILITY, "get", "service", name, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    return f"http://{ip}:{port}"


def get(cluster, url: str, **params: str):
    encoded = [arg for name, value in params.items() for arg in ("--data-urlencode", f"{name}={value}")]
    return json.loads(cluster.curl("--get", *encoded, url).stdout)


def prometheus(cluster, path: str, **params: str) -> dict | list:
    """Prometheus' HTTP API (/api/v1/PATH): its data."""
    answer = get(cluster, f"{service_url(cluster, PROMETHEUS)}/api/v1/{path}", **params)
    assert answer["status"] == "success", answer
    return answer["data"]


def promql(cluster, query: str) -> list[dict]:
    return prometheus(cluster, "query", query=query)["result"]


def alertmanager_alerts(cluster, alertname: str) -> list[dict]:
    """The alerts of that name Alertmanager holds, active, inhibited or silenced (API v2)."""
    return get(
        cluster, f"{service_url(cluster, ALERTMANAGER)}/api/v2/alerts", filter=f'alertname="{alertname}"'
    )
