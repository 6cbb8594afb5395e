"""The manifests and charts we ship, against a real single-node Kubernetes (tests/support/cluster_node.py)
running the image `make build` makes.

Loki, Tempo, Grafana, MinIO and Promtail are never run (their images cannot be had here, and the project
runs no AGPL component): their charts, like every pinned chart, are rendered and dry-run only.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys

import pytest
import yaml

from support.charts import KUBERNETES_VERSION, cluster_releases, render
from support.cluster_node import INSIDE
from support.cluster_service import (
    CONTAINER,
    DEPLOYMENT,
    NAMESPACE,
    SERVICE,
    at_rest,
    cluster_url,
    condition,
    pods,
    ready_pods,
)
from support.deploy_files import yaml_documents
from support.paths import REPO, SHARED
from support.processes import poll_until

CRDS = SHARED / "crds" / "prometheus-operator" / "v0.93.0"
TEXT = "The goalie stopped every shot in overtime of the playoff game."


def post(cluster, url: str, *args: str) -> tuple[int, dict]:
    """curl -X POST inside the node's network namespace: (status, JSON body)."""
    out = cluster.curl("--write-out", "\n%{http_code}", "-X", "POST", *args, url).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def new_traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"traceparent: 00-{trace_id}-{secrets.token_hex(8)}-01"


# --- kubectl apply -f manifests/ ------------------------------------------------------------------


def test_apply_accepts_every_manifest_and_the_pod_runs_restricted(deployed):
    cluster = deployed.cluster
    shipped = [doc for path in sorted((REPO / "manifests").glob("*.yaml")) for doc in yaml_documents(path)]
    for doc in shipped:
        kind, name = doc["kind"].lower(), doc["metadata"]["name"]
        assert re.search(
            rf"^{kind}[./][^ ]*{name} (created|configured|unchanged)$", deployed.applied, re.M
        ), f"{kind}/{name} not accepted:\n{deployed.applied}"

    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": NAMESPACE},
        "spec": {
            "containers": [
                {"name": "c", "image": "registry.k8s.io/pause:3.10", "securityContext": {"privileged": True}}
            ]
        },
    }
    refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(privileged), check=False)
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:v1.35"' in refused.stderr and "privileged" in refused.stderr

    (pod,) = [p for p in ready_pods(cluster)][:1]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    name = pod["metadata"]["name"]
    assert cluster.kubectl("-n", NAMESPACE, "exec", name, "--", "id", "-u").stdout.strip() == "1034"
    written = cluster.kubectl("-n", NAMESPACE, "exec", name, "--", "touch", "/written", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr


# --- predictions ----------------------------------------------------------------------------------


def check_predictions(cluster, url: str) -> None:
    status, body = post(cluster, f"{url}/predict", "--data", TEXT)
    assert status == 200 and body["label"] == "rec.sport.hockey", body
    status, body = post(
        cluster,
        f"{url}/predict",
        "-H",
        "Content-Type: application/json",
        "--data",
        json.dumps({"text": TEXT}),
    )
    assert status == 200 and body["label"] == "rec.sport.hockey", body
    status, body = post(cluster, f"{url}/predict", "--data", "   ")
    assert status == 400 and body["reason"], body


def test_predictions_through_the_service_cluster_address(deployed):
    check_predictions(deployed.cluster, cluster_url(deployed.cluster))


def test_predictions_through_kubectl_port_forward(deployed):
    cluster = deployed.cluster
    forward = subprocess.Popen(
        [
            *cluster.enter(),
            cluster.binaries["kubectl"],
            "--kubeconfig",
            cluster.kubeconfig,
            "-n",
            NAMESPACE,
            "port-forward",
            f"svc/{SERVICE}",
            "3000:3000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        poll_until(
            lambda: cluster.curl("http://127.0.0.1:3000/readyz", check=False).returncode == 0,
            timeout=30,
            what="kubectl port-forward",
        )
        check_predictions(cluster, "http://127.0.0.1:3000")
    finally:
        forward.terminate()
        forward.wait(10)


# --- the pod's log file on the node ---------------------------------------------------------------

CRI_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) (stdout|stderr) (F|P) (.*)$")


def test_the_pods_log_file_holds_one_json_prediction_event_per_prediction(deployed):
    cluster = deployed.cluster
    trace_id, traceparent = new_traceparent()
    url = cluster_url(cluster)
    for _ in range(3):
        assert post(cluster, f"{url}/predict", "-H", traceparent, "--data", TEXT)[0] == 200

    def events():
        found = []
        for path in cluster.pod_logs.glob(f"{NAMESPACE}_{SERVICE}-*/{CONTAINER}/*.log"):
            for line in path.read_text().splitlines():
                match = CRI_LINE.match(line)
                assert match, f"not a CRI log line in {path}: {line!r}"
                if match[3] == "F" and f'"trace_id":"{trace_id}"' in match[4]:
                    found.append(json.loads(match[4]))
        return [e for e in found if e.get("event") == "prediction"]

    # The event is written up to TELEMETRY_FLUSH_SECONDS after the response.
    found = poll_until(lambda: len(events()) >= 3 and events(), timeout=30, what="the prediction events")
    assert len(found) == 3 and all(
        e["trace_id"] == trace_id and e["label"] == "rec.sport.hockey" for e in found
    )


# --- a rolling restart under traffic --------------------------------------------------------------


def test_a_rolling_restart_under_steady_traffic_fails_no_request(deployed):
    cluster = deployed.cluster
    before = {pod["metadata"]["name"] for pod in ready_pods(cluster)}
    # Steady: two clients at 20 requests/s in all, well below what makes the HPA scale (test_autoscaling.py).
    traffic = subprocess.Popen(
        [
            *cluster.enter(),
            sys.executable,
            INSIDE,
            "traffic",
            f"{cluster_url(cluster)}/predict",
            "600",
            "2",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cluster.kubectl("-n", NAMESPACE, "rollout", "restart", DEPLOYMENT)
        cluster.kubectl("-n", NAMESPACE, "rollout", "status", DEPLOYMENT, "--timeout=300s", timeout=330)
        # Old pods still terminating keep serving their last requests: wait until they are gone.
        poll_until(
            lambda: not before & {p["metadata"]["name"] for p in pods(cluster)},
            timeout=90,
            what="the old pods to be gone",
        )
    finally:
        traffic.send_signal(signal.SIGTERM)
        out, err = traffic.communicate(timeout=30)
    result = json.loads(out)
    assert result["failed"] == [], result
    assert result["ok"] > 50, result
    assert len(result["model_versions"]) == 1, result
    after = {pod["metadata"]["name"] for pod in ready_pods(cluster)}
    assert after and not after & before


# --- HPA, PDB, NetworkPolicy, ServiceAccount ------------------------------------------------------


def test_the_autoscaler_budget_policy_and_account_are_in_force_as_far_as_one_node_allows(deployed):
    cluster = deployed.cluster

    def get(kind: str) -> dict:
        return json.loads(cluster.kubectl("-n", NAMESPACE, "get", kind, SERVICE, "-o", "json").stdout)

    # With no load, the HPA holds the Deployment at minReplicas, on CPU metrics it gets
    # (metrics-server; scaling itself: test_autoscaling.py).
    at_rest(cluster)
    hpa = get("horizontalpodautoscaler")
    assert get("deployment")["spec"]["replicas"] == hpa["spec"]["minReplicas"] == 2
    scaling = condition(hpa, "ScalingActive")
    assert scaling["status"] == "True" and scaling["reason"] == "ValidMetricFound", scaling

    # The disruption controller counts the healthy pods against minAvailable.
    pdb = poll_until(
        lambda: (p := get("poddisruptionbudget"))["status"].get("currentHealthy") == 2 and p,
        timeout=60,
        what="the PDB's status",
    )
    assert pdb["status"]["desiredHealthy"] == 1 and pdb["status"]["disruptionsAllowed"] == 1

    # Accepted and stored; the bridge CNI plugin does not enforce it.
    assert get("networkpolicy")["spec"]["policyTypes"] == ["Ingress", "Egress"]

    # The pod runs as its own service account, with no API token mounted.
    assert get("serviceaccount")["automountServiceAccountToken"] is False
    for pod in ready_pods(cluster):
        assert pod["spec"]["serviceAccountName"] == SERVICE
        mounts = [m["mountPath"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])]
        assert not any("serviceaccount" in path for path in mounts), mounts


# --- every pinned chart, rendered with our values, dry-run against the API server -----------------


@pytest.mark.parametrize("release_name", sorted(cluster_releases()))
def test_every_pinned_chart_passes_a_server_side_dry_run(cluster, helm, release_name, tmp_path):
    release = cluster_releases()[release_name]
    objects = render(release, helm)
    assert objects, f"{release_name} rendered nothing"
    custom_kinds = {doc["kind"] for doc in objects if doc["apiVersion"].startswith("monitoring.coreos.com/")}
    for kind in sorted(custom_kinds):
        (crd,) = CRDS.glob(f"monitoring.coreos.com_{kind.lower()}s.yaml")
        cluster.kubectl("apply", "--server-side", "-f", crd)
        cluster.kubectl("wait", "--for=condition=Established", "-f", crd, "--timeout=60s")
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": release.namespace}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(namespace))
    # Objects go where helm puts them: into the release's namespace, unless they name another (e.g.
    # metrics-server's RoleBinding in kube-system, to read the API server's authentication settings).
    by_namespace: dict[str, list[dict]] = {}
    for doc in objects:
        by_namespace.setdefault(doc["metadata"].get("namespace", release.namespace), []).append(doc)
    applied = 0
    for namespace, docs in sorted(by_namespace.items()):
        rendered = tmp_path / f"{release_name}-{namespace}.yaml"
        rendered.write_text(yaml.safe_dump_all(docs))
        # Where the release is installed (the `observability` fixture, with its test-only overlay), helm
        # owns the fields the overlay changed: taking them over is no error of the objects.
        dry_run = cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-n",
            namespace,
            "-f",
            rendered,
            check=False,
        )
        assert dry_run.returncode == 0 and "error" not in dry_run.stderr.lower(), dry_run.stderr
        applied += dry_run.stdout.count("serverside-applied (server dry run)")
    assert applied == len(objects), f"{applied} of {len(objects)} objects applied"


def test_the_server_is_the_version_the_manifests_are_checked_against(cluster):
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    go_mod = (REPO / "tests" / "cluster" / "kubernetes" / "go.mod").read_text()
    (built,) = re.findall(r"^\s*k8s\.io/kubernetes (v\S+)", go_mod, re.M)
    assert f"{version['major']}.{version['minor']}" == KUBERNETES_VERSION
    assert version["gitVersion"] == built
