"""The service as manifests/ deploys it: the names the cluster tests look it up by (read from the
manifests), and its pods."""

from __future__ import annotations

import json

import yaml

from support.paths import REPO

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
