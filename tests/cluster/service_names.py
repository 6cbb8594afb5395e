"""The service as manifests/ deploys it: names the cluster tests look it up by."""

from __future__ import annotations

import yaml

from helpers import REPO

NAMESPACE = "newsgroups"
SERVICE = "newsgroups-classifier"
DEPLOYMENT = f"deployment/{SERVICE}"
# The image the Deployment runs, as written in manifests/deployment.yaml (what `make build` tags).
MANIFEST_IMAGE = yaml.safe_load((REPO / "manifests" / "deployment.yaml").read_text())["spec"]["template"][
    "spec"
]["containers"][0]["image"]
