"""The cluster tier: a real single-node Kubernetes (node.py), the service image built by `make build`, and
the manifests applied as the README says."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from images import image_archive, images_env
from node import BINARIES, PAUSE_IMAGE, Cluster, cluster_binary, stop_on_sigterm
from service_names import DEPLOYMENT, MANIFEST_IMAGE, NAMESPACE, SERVICE

from helpers import REPO, poll_until

# The releases `make cluster-up` installs and their rendering (tests/deploy/deploy_files.py), shared.
sys.path.insert(0, str(REPO / "tests" / "deploy"))


def pytest_collection_modifyitems(items):
    for item in items:
        if "/cluster/" in str(item.path):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """The node, Ready, with CoreDNS answering; torn down (and checked) at the end of the session."""
    packages = subprocess.run(
        ["bash", REPO / "tests/cluster/packages.sh", "--check"], capture_output=True, text=True
    )
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
    """What `kubectl apply -f manifests/` printed, and the cluster it ran against."""

    applied: str
    cluster: Cluster


@pytest.fixture(scope="session")
def service_image(cluster, models_home, tmp_path_factory) -> str:
    """`make build` (bentoml build + bentoml containerize, with buildah), imported into the node."""
    build = [
        "make",
        "--no-print-directory",
        "build",
        f"BENTOML_HOME={models_home}",
        "CONTAINERIZE_OPTS=--backend buildah --opt pull-never",
    ]
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", *build],
        cwd=REPO,
        env=images_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, f"make build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    # buildah names it localhost/<name>; a Docker engine (and the kubelet) say docker.io/library/<name>.
    tar = tmp_path_factory.mktemp("image") / "service.tar"
    image_archive(f"localhost/{MANIFEST_IMAGE}", tar, f"docker.io/library/{MANIFEST_IMAGE}")
    cluster.import_image(tar)
    tar.unlink()
    return MANIFEST_IMAGE


@pytest.fixture(scope="session")
def deployed(cluster, service_image) -> Deployed:
    """The manifests applied as docs/deployment.md says (the Secret first), rolled out, and scaled by the
    HPA to its minReplicas, all Ready: where every test starts from."""
    kubectl = cluster.kubectl
    kubectl("apply", "-f", REPO / "manifests" / "00-namespace.yaml")
    secret = ["create", "secret", "generic", "newsgroups-classifier-feedback"]
    kubectl("-n", NAMESPACE, *secret, "--from-literal=FEEDBACK_SIGNING_KEY=cluster-test-signing-key")
    applied = kubectl("apply", "-f", REPO / "manifests").stdout
    min_replicas = kubectl(
        "-n", NAMESPACE, "get", "hpa", SERVICE, "-o", "jsonpath={.spec.minReplicas}"
    ).stdout

    def all_ready() -> bool:
        ready = kubectl("-n", NAMESPACE, "get", DEPLOYMENT, "-o", "jsonpath={.status.readyReplicas}").stdout
        return ready == min_replicas

    try:
        poll_until(all_ready, timeout=300, interval=1, what=f"{min_replicas} ready replicas")
    except AssertionError as exc:
        described = kubectl("-n", NAMESPACE, "describe", "pods", check=False).stdout
        raise AssertionError(f"{exc}\n{described[-6000:]}\n{cluster.logs(20)}") from None
    return Deployed(applied, cluster)
