"""The service as manifests/ deploys it: names the cluster tests look it up by, and its pods."""

from __future__ import annotations

import json

import yaml

from helpers import REPO

NAMESPACE = "newsgroups"
SERVICE = "newsgroups-classifier"
DEPLOYMENT = f"deployment/{SERVICE}"
# The image the Deployment runs, as written in manifests/deployment.yaml (what `make build` tags).
MANIFEST_IMAGE = yaml.safe_load((REPO / "manifests" / "deployment.yaml").read_text())["spec"]["template"][
    "spec"
]["containers"][0]["image"]


def pods(cluster) -> list[dict]:
    listed = cluster.kubectl(
        "-n", NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/name={SERVICE}", "-o", "json"
    )
    return json.loads(listed.stdout)["items"]


def ready_pods(cluster) -> list[dict]:
    def ready(pod):
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
        )

    return [pod for pod in pods(cluster) if ready(pod) and not pod["metadata"].get("deletionTimestamp")]
