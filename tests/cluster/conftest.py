"""The cluster tier: a real single-node Kubernetes (support/cluster_node.py), the part of the
observability stack that can run here installed as `make cluster-up` installs it, the service image
built by `make build`, and the manifests applied as docs/deployment.md says."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from support.charts import cluster_releases, make_dry_run, render
from support.cluster_images import image_archive, images_env
from support.cluster_node import BINARIES, NODE_IP, PAUSE_IMAGE, Cluster, cluster_binary, stop_on_sigterm
from support.cluster_service import DEPLOYMENT, MANIFEST_IMAGE, NAMESPACE, SERVICE
from support.deploy_files import find_manifest, manifest_documents, prometheus_rule_files
from support.otlp_receiver import OtlpReceiver
from support.paths import ARCHIVE, REPO
from support.processes import GiveUp, poll_until, stop_process, tail
from support.s3_store import ACCESS_KEY, SECRET_KEY
from support.stand_ins import notifications

HERE = Path(__file__).parent
# One test-only values overlay per release that runs here (image names, pull policy, storage), and the
# HPA's test-only patch (hpa.yaml).
OVERLAYS = HERE / "overlays"
STAND_INS = HERE / "stand-ins.yaml"


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


@dataclass
class Observability:
    """The releases installed from our values (each with its overlay), and the test suite's OTLP receivers
    at Loki's and Tempo's addresses and its alert webhook."""

    releases: list
    received: Path
    receivers: subprocess.Popen

    def tempo(self) -> OtlpReceiver:
        """Everything the collector has exported to Tempo's address so far."""
        return OtlpReceiver.read_dumps(self.received / "tempo")

    def loki(self) -> OtlpReceiver:
        """Everything the collector has exported to Loki's address so far."""
        return OtlpReceiver.read_dumps(self.received / "loki")

    def notifications(self) -> list[dict]:
        """Every notification Alertmanager has posted to the webhook address so far, oldest first."""
        return notifications(self.received)


def stand_in_ports() -> dict[str, int]:
    """Service name -> the port its EndpointSlice sends to (stand-ins.yaml), checked to be the node IP."""
    ports = {}
    for doc in yaml.safe_load_all(STAND_INS.read_text()):
        if doc["kind"] == "EndpointSlice":
            assert [e["addresses"] for e in doc["endpoints"]] == [[NODE_IP]], doc["endpoints"]
            ((port,),) = [[p["port"] for p in doc["ports"]]]
            ports[doc["metadata"]["labels"]["kubernetes.io/service-name"]] = port
    return ports


def start_stand_ins(cluster: Cluster, received: Path) -> subprocess.Popen:
    """support/stand_ins.py inside the node's network namespace, listening on the node IP: the OTLP
    receivers at Loki's and Tempo's addresses, and the alert webhook."""
    ports = stand_in_ports()
    log = received.with_suffix(".log")
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                *cluster.enter(),
                sys.executable,
                "-m",
                "support.stand_ins",
                NODE_IP,
                str(ports["loki"]),
                str(ports["tempo"]),
                str(ports["alert-webhook"]),
                received,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO / "tests")},  # the harness, as pytest has it
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise GiveUp(f"stand_ins.py exited with {process.returncode}:\n{tail(log)}")
        return (received / "ready").exists()

    poll_until(ready, timeout=30, what="the OTLP receivers at Loki's and Tempo's addresses, the webhook")
    return process


def start_store(cluster: Cluster, directory: Path) -> subprocess.Popen:
    """versitygw (support/s3_store.py) inside the node's network namespace on the node IP, where the
    Service minio leads (stand-ins.yaml): the model store, standing in for MinIO. The bucket
    manifests/model-store.yaml names is made empty."""
    port = stand_in_ports()["minio"]
    bucket = find_manifest("ConfigMap", "newsgroups-model-store")["data"]["MODEL_STORE_BUCKET"]
    (directory / bucket).mkdir(parents=True)
    log = directory.with_suffix(".log")
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [*cluster.enter(), sys.executable, "-m", "support.s3_store", NODE_IP, str(port), directory],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": f"{REPO / 'tests'}:{REPO / 'src'}"},
        )

    def listening() -> bool:
        if process.poll() is not None:
            raise GiveUp(f"versitygw exited with {process.returncode}:\n{tail(log)}")
        return cluster.curl(f"http://{NODE_IP}:{port}/", check=False).returncode == 0

    poll_until(listening, timeout=30, what="the model store's S3 server")
    return process


def volume_owner(name: str) -> str:
    """The user a node directory standing in for a volume belongs to: the retraining Job's for its training
    data, nobody (the Prometheus chart's pods) for the rest."""
    if name == "newsgroups-training-data":
        (cronjob,) = [doc for _, doc in manifest_documents() if doc["kind"] == "CronJob"]
        return str(cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"])
    return "65534"


# Test-only: the shipped rules with shorter durations, so that an alert fires and resolves within a
# minute or two (test_alerts.py): every alert's `for:` (5 to 30 minutes shipped) is 15 s, and the drift
# statistics' window (1 h: the `newsgroups-drift` recording rules) is 1 m. Applied to
# helm-config/prometheus/values.yaml's rules as they are, and given to the prometheus release as one more
# values overlay after overlays/prometheus.yaml.
QUICK_RULES = {"for": "15s", "drift group": "newsgroups-drift", "drift window": ("[1h]", "[1m]")}


def quick_rules(path: Path) -> Path:
    """A values overlay holding the shipped rules with QUICK_RULES' durations."""
    files = copy.deepcopy(prometheus_rule_files())
    (drift,) = [g for g in files["recording_rules.yml"]["groups"] if g["name"] == QUICK_RULES["drift group"]]
    shipped, quick = QUICK_RULES["drift window"]
    assert any(shipped in rule["expr"] for rule in drift["rules"]), drift
    for rule in drift["rules"]:
        rule["expr"] = rule["expr"].replace(shipped, quick)
    for group in files["alerting_rules.yml"]["groups"]:
        for rule in group["rules"]:
            rule["for"] = QUICK_RULES["for"]
    changed = {name: files[name] for name in ("recording_rules.yml", "alerting_rules.yml")}
    path.write_text(yaml.safe_dump({"serverFiles": changed}, sort_keys=False))
    return path


def cluster_up_command(*words: str) -> list[str]:
    """The kubectl command `make cluster-up` runs that holds these words, as kubectl's arguments."""
    (command,) = [c for c in make_dry_run("cluster-up") if c[0] == "kubectl" and set(words) <= set(c)]
    return [word for word in command[1:] if not word.startswith((">", "2>"))]


def images_of(objects: list[dict]) -> set[str]:
    """Every container image a rendering runs."""
    images = set()
    for doc in objects:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        images |= {c["image"] for c in pod.get("containers", []) + pod.get("initContainers", [])}
    return images


@pytest.fixture(scope="session")
def observability(cluster, helm, tmp_path_factory) -> Iterator[Observability]:
    """What `make cluster-up` installs that can run here, from its chart renderings and our values (plus
    each release's overlay): metrics-server, Prometheus with Alertmanager (and QUICK_RULES' durations) and
    the collector DaemonSet, installed side by side (`make cluster-up` installs one after the other; none
    waits for another). Loki's and Tempo's addresses are the test suite's OTLP receivers, the webhook
    address in the Secret `make cluster-up` makes its webhook receiver, Prometheus' and Alertmanager's
    claims are bound to directories of the node (stand-ins.yaml). The images are imported first."""
    releases = [r for r in cluster_releases().values() if (OVERLAYS / f"{r.name}.yaml").exists()]
    received = tmp_path_factory.mktemp("observability") / "received"
    receivers = start_stand_ins(cluster, received)
    store = start_store(cluster, received.parent / "model-store")
    try:
        cluster.kubectl("create", "namespace", "observability")
        for doc in yaml.safe_load_all(STAND_INS.read_text()):
            if doc["kind"] == "PersistentVolume":
                owner, path = volume_owner(doc["metadata"]["name"]), doc["spec"]["hostPath"]["path"]
                cluster.in_netns("install", "-d", "-o", owner, "-g", owner, path)
        # The training data as an offline cluster holds it: the archive in the volume (docs/deployment.md).
        training_data = next(
            d["spec"]["hostPath"]["path"] for d in yaml.safe_load_all(STAND_INS.read_text())
            if d["metadata"]["name"] == "newsgroups-training-data"
        )  # fmt: skip
        cluster.in_netns("install", "-m", "0644", ARCHIVE, f"{training_data}/{ARCHIVE.name}")
        # Server-side: no last-applied annotation, which the charts' dry runs (test_cluster.py) would take
        # for objects of their own to migrate.
        cluster.kubectl("apply", "--server-side", "-f", STAND_INS)
        # The Secret Alertmanager reads the webhook address from, as `make cluster-up` makes it.
        cluster.kubectl(*cluster_up_command("create", "secret", "alertmanager-webhook"))
        overlays = {r.name: [OVERLAYS / f"{r.name}.yaml"] for r in releases}
        overlays["prometheus"].append(quick_rules(received.parent / "quick-rules.yaml"))
        for release in releases:
            values = [arg for overlay in overlays[release.name] for arg in ("--values", overlay)]
            for image in sorted(images_of(render(release, helm, *values))):
                assert image.startswith("localhost/"), f"{release.name} runs {image}: not built here"
                archive = received.parent / "image.tar"
                cluster.import_image(image_archive(image, archive))
                archive.unlink()

        def install(release) -> None:
            try:
                cluster.install_release(helm, release, *overlays[release.name])
            except AssertionError as exc:
                described = cluster.kubectl("-n", release.namespace, "describe", "pods", check=False).stdout
                raise AssertionError(f"{exc}\n{described[-6000:]}\n{cluster.logs(20)}") from None

        # The releases do not depend on one another: installed side by side, each waited for (--wait).
        with ThreadPoolExecutor(len(releases)) as pool:
            for done in [pool.submit(install, release) for release in releases]:
                done.result()
        yield Observability(releases, received, receivers)
    finally:
        receivers.terminate()
        receivers.wait(30)
        stop_process(store)


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


def publish_model(cluster: Cluster, models_home: Path) -> str:
    """`make publish-model` of the test suite's model, run inside the node's network namespace, where the
    model store's Service reaches the stand-in, with the keys a user exports for another S3; its tag."""
    env = {
        **os.environ,
        "BENTOML_HOME": str(models_home),
        "MODEL_STORE_ENDPOINT": f"http://{NODE_IP}:{stand_in_ports()['minio']}",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    published = cluster.in_netns("make", "--no-print-directory", "-C", REPO, "publish-model", env=env)
    return published.stdout.strip()


@pytest.fixture(scope="session")
def deployed(cluster, observability, service_image, models_home) -> Deployed:
    """The manifests applied as docs/deployment.md says (after `make cluster-up`'s stack, the Secrets
    first; the model published with `make publish-model` and named in its ConfigMap), the HPA's test-only
    overlay (overlays/hpa.yaml) patched in, rolled out, and scaled by the HPA to its minReplicas, all
    Ready, and the retraining trigger Ready: where every test starts from."""
    kubectl = cluster.kubectl
    kubectl("apply", "-f", REPO / "manifests" / "00-namespace.yaml")
    secret = ["create", "secret", "generic", "newsgroups-classifier-feedback"]
    kubectl("-n", NAMESPACE, *secret, "--from-literal=FEEDBACK_SIGNING_KEY=cluster-test-signing-key")
    # The model store's key, as `make cluster-up` makes it, with the stand-in's secret.
    store_keys = [
        f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS_KEY}",
        f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET_KEY}",
    ]
    kubectl("-n", NAMESPACE, "create", "secret", "generic", "model-store-credentials", *store_keys)
    tag = publish_model(cluster, models_home)
    kubectl(
        "-n",
        NAMESPACE,
        "create",
        "configmap",
        "newsgroups-classifier-model",
        f"--from-literal=MODEL_TAG={tag}",
    )
    applied = kubectl("apply", "-f", REPO / "manifests").stdout
    kubectl(
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "deployment/newsgroups-retraining-trigger",
        "--timeout=300s",
        timeout=330,
    )
    kubectl("-n", NAMESPACE, "patch", "hpa", SERVICE, "--type=merge", "--patch-file", OVERLAYS / "hpa.yaml")
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
