"""The cluster tier: a real single-node Kubernetes (node.py), the service image built by `make build`, and
the manifests applied as the README says."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from images import image_archive, images_env
from node import BINARIES, PAUSE_IMAGE, Cluster, cluster_binary, stop_on_sigterm

from helpers import REPO

MANIFEST_IMAGE = next(
    container["image"]
    for container in yaml.safe_load((REPO / "manifests" / "deployment.yaml").read_text())["spec"]["template"][
        "spec"
    ]["containers"]
)
NAMESPACE = "newsgroups"
DEPLOYMENT = "deployment/newsgroups-classifier"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/cluster/" in str(item.path):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """The node, Ready, with CoreDNS answering; torn down (and checked) at the end of the session."""
    packages = subprocess.run(["bash", REPO / "tests/cluster/packages.sh", "--check"], capture_output=True, text=True)
    assert packages.returncode == 0, f"{packages.stderr.strip()}: run `make cluster-packages`"
    binaries = {name: cluster_binary(name) for name in BINARIES}
    work = tmp_path_factory.mktemp("cluster")
    pause = image_archive(PAUSE_IMAGE, work / "pause.tar")
    node = Cluster(work / "node", binaries, pause)
    stop_on_sigterm()
    try:
        node.start()
        yield node
    finally:
        node.stop()


@dataclass(frozen=True)
class Deployed:
    """What `kubectl apply -f manifests/` printed, and the pods of the rolled-out Deployment."""

    applied: str
    cluster: Cluster


@pytest.fixture(scope="session")
def service_image(cluster, models_home, tmp_path_factory) -> str:
    """`make build` (bentoml build + bentoml containerize, with buildah), imported into the node."""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "make", "--no-print-directory", "build",
         f"BENTOML_HOME={models_home}", "CONTAINERIZE_OPTS=--backend buildah --opt pull-never"],
        cwd=REPO, env=images_env(), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, f"make build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    # buildah names it localhost/<name>; a Docker engine (and the kubelet) say docker.io/library/<name>.
    built = f"localhost/{MANIFEST_IMAGE}"
    tar = image_archive(built, tmp_path_factory.mktemp("image") / "service.tar", f"docker.io/library/{MANIFEST_IMAGE}")
    cluster.import_image(tar)
    tar.unlink()
    return MANIFEST_IMAGE


@pytest.fixture(scope="session")
def deployed(cluster, service_image) -> Deployed:
    """The manifests applied as docs/deployment.md says, the Secret first, and the rollout finished."""
    cluster.kubectl("apply", "-f", REPO / "manifests" / "00-namespace.yaml")
    cluster.kubectl("-n", NAMESPACE, "create", "secret", "generic", "newsgroups-classifier-feedback",
                    "--from-literal=FEEDBACK_SIGNING_KEY=cluster-test-signing-key")  # fmt: skip
    applied = cluster.kubectl("apply", "-f", REPO / "manifests").stdout
    rollout = cluster.kubectl("-n", NAMESPACE, "rollout", "status", DEPLOYMENT, "--timeout=300s",
                              check=False, timeout=330)  # fmt: skip
    if rollout.returncode != 0:
        described = cluster.kubectl("-n", NAMESPACE, "describe", "pods", check=False).stdout
        raise AssertionError(f"the rollout failed:\n{rollout.stderr}\n{described[-6000:]}\n{cluster.logs(20)}")
    return Deployed(applied, cluster)
