"""The service as manifests/ deploys it: the names the cluster tests look it up by (read from the
manifests), and its pods."""

from __future__ import annotations

import json

import yaml

from support.paths import REPO
from support.processes import poll_until

_DEPLOYMENT = yaml.safe_load((REPO / "manifests" / "deployment.yaml").read_text())
NAMESPACE = _DEPLOYMENT["metadata"]["namespace"]
SERVICE = yaml.safe_load((REPO / "manifests" / "service.yaml").read_text())["metadata"]["name"]
DEPLOYMENT = f"deployment/{_DEPLOYMENT['metadata']['name']}"
_CONTAINER = _DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]
CONTAINER = _CONTAINER["name"]
# The image the Deployment runs, as written in manifests/deployment.yaml (what `make build` tags).
MANIFEST_IMAGE = _CONTAINER["image"]
POD_SELECTOR = ",".join(f"{k}={v}" for k, v in _DEPLOYMENT["spec"]["selector"]["matchLabels"].items())


def pods(cluster) -> list[dict]:
    listed = cluster.kubectl("-n", NAMESPACE, "get", "pods", "-l", POD_SELECTOR, "-o", "json")
    return json.loads(listed.stdout)["items"]


def ready_pods(cluster) -> list[dict]:
    def ready(pod):
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
        )

    return [pod for pod in pods(cluster) if ready(pod) and not pod["metadata"].get("deletionTimestamp")]


def cluster_url(cluster) -> str:
    """The Service's cluster address (reachable inside the node's network namespace)."""
    ip = cluster.kubectl(
        "-n", NAMESPACE, "get", "service", SERVICE, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    return f"http://{ip}:3000"


def autoscaler(cluster) -> dict:
    return json.loads(cluster.kubectl("-n", NAMESPACE, "get", "hpa", SERVICE, "-o", "json").stdout)


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in obj["status"].get("conditions", []) if c["type"] == kind), {})


def at_rest(cluster, timeout: float = 240) -> list[dict]:
    """Wait until the HPA, with metrics, holds the Deployment at minReplicas, every pod Ready and no pod
    terminating (after load, the HPA's scale-down window passes first): where a test that counts or picks
    pods starts. Returns the pods."""

    def rested():
        hpa = autoscaler(cluster)
        listed = pods(cluster)
        return (
            condition(hpa, "ScalingActive").get("status") == "True"
            and hpa["status"].get("desiredReplicas") == hpa["spec"]["minReplicas"]
            and len(listed) == len(ready_pods(cluster)) == hpa["spec"]["minReplicas"]
            and listed
        )

    return poll_until(rested, timeout=timeout, interval=2, what="the HPA at rest at minReplicas")
