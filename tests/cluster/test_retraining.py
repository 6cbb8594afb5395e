"""The loop closed in the real cluster: skewed traffic and its feedback make the class drift alert fire,
Alertmanager's model route posts it to the retraining trigger, which starts the retraining Job from its
template; the Job exports the labelled predictions, trains, gates, publishes to the model store and rolls
the pods out, which then serve the new version without a failed request. And the refusal: shuffled labels,
`make retrain`, the gate says no, nothing rolls out, and Prometheus counts it.

Real: Kubernetes (Jobs, the podFailurePolicy, RBAC, rollouts), Prometheus and its rules, Alertmanager and
its routing tree, the collector shipping the pods' log lines, the image `make build` makes. Stand-ins: the
model store's S3 server is versitygw (Apache-2.0) in place of MinIO, and the Job's export reads Loki's query
API from the Loki contract stand-in the e2e suite checks (tests/support/loki_contract.py), answering from what
the collector exported to Loki's address: Loki and MinIO (AGPL-3.0) are never run.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from newsgroups_classifier.config import RetrainingSettings, TriggerSettings
from newsgroups_classifier.data import load_split
from newsgroups_classifier.retraining import MODEL_TAG_ANNOTATION
from newsgroups_classifier.retraining_trigger import ALERTS_PATH
from support import feedback_scenarios
from support.cluster_node import INSIDE
from support.cluster_service import DEPLOYMENT, NAMESPACE, SERVICE, ready_pods
from support.cluster_stack import promql
from support.dashboards import dashboard_targets, grafana_variables
from support.paths import REPO
from support.processes import poll_until

RETRAINING = RetrainingSettings.model_construct()
TRIGGER = TriggerSettings.model_construct()
JOBS = f"app.kubernetes.io/name={TRIGGER.retraining_cronjob}"
TRIGGER_DEPLOYMENT = "deployment/newsgroups-retraining-trigger"
# What skewed traffic makes fire: the class mix's drift and, as the skew moves the confidence too, its
# drift; whichever Alertmanager delivers first starts the retraining.
DRIFT_ALERTS = ("NewsgroupsClassDrift", "NewsgroupsConfidenceDrift")


def kubectl_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("-n", NAMESPACE, *args, "-o", "json").stdout)


def serving_tag(cluster) -> str:
    return kubectl_json(cluster, "get", "configmap", RETRAINING.model_configmap)["data"]["MODEL_TAG"]


def jobs(cluster) -> list[dict]:
    return kubectl_json(cluster, "get", "jobs", "-l", JOBS)["items"]


def finished(job: dict) -> dict | None:
    """The Job's terminal condition, once it has one."""
    conditions = job.get("status", {}).get("conditions", [])
    return next(
        (c for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None
    )


def wait_finished(cluster, name: str, timeout: float = 600) -> tuple[dict, dict]:
    """(the Job, its terminal condition), once it ended."""
    job = poll_until(
        lambda: (j := kubectl_json(cluster, "get", "job", name)) and finished(j) and j,
        timeout=timeout,
        interval=2,
        what=f"the Job {name} to end",
    )
    return job, finished(job)


def job_log(cluster, name: str) -> str:
    """Every line of every pod of the Job, and how its pods ended: for a failure's message."""
    logs = cluster.kubectl(
        "-n", NAMESPACE, "logs", "-l", f"job-name={name}", "--tail=-1", "--prefix", check=False
    ).stdout  # fmt: skip
    described = cluster.kubectl("-n", NAMESPACE, "describe", "pods", "-l", f"job-name={name}", check=False)
    return f"{logs[-6000:]}\n{described.stdout[-4000:]}"


def job_events(cluster, name: str) -> dict[str, dict]:
    """The Job's JSON lines by event (the last of each)."""
    lines = cluster.kubectl("-n", NAMESPACE, "logs", f"job/{name}", "--tail=-1").stdout.splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return {event["event"]: event for event in events if "event" in event}


def trigger_decisions(cluster) -> list[dict]:
    lines = cluster.kubectl("-n", NAMESPACE, "logs", TRIGGER_DEPLOYMENT, "--tail=-1").stdout.splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in events if e.get("event") == "retraining_trigger"]


def scraped(cluster) -> bool:
    """Prometheus has scraped every ready pod of the classifier."""
    names = {pod["metadata"]["name"] for pod in ready_pods(cluster)}
    found = {series["metric"].get("pod") for series in promql(cluster, "newsgroups_model_info")}
    return bool(names) and names <= found


def start_from_nothing(cluster) -> str:
    """Each test's own "before": no retraining runs or ran within the cooldown (finished Jobs deleted: the
    trigger reads the cooldown from them), no drift alert is active, every pod has been scraped, and the
    Job exports only what comes from now on (FEEDBACK_SINCE, an RFC 3339 time). Returns that time."""
    poll_until(
        lambda: not [j for j in jobs(cluster) if not finished(j)], timeout=600, interval=2, what="no Job"
    )
    # No drift alert pending or firing: its notification would start a Job (earlier traffic's drift
    # leaves the test's one-minute window). The live accuracy alert's window is hours: it may fire on.
    drifting = f'ALERTS{{alertname=~"{"|".join(DRIFT_ALERTS)}"}}'
    poll_until(lambda: not promql(cluster, drifting), timeout=300, interval=5, what="no drift alert")
    cluster.kubectl("-n", NAMESPACE, "delete", "jobs", "-l", JOBS, "--wait=true", "--timeout=120s")
    # increase() counts from a series' first scrape: what a pod answers before it, the rules never see.
    poll_until(lambda: scraped(cluster), timeout=120, interval=2, what="a scrape of every ready pod")
    since = datetime.now(UTC).isoformat()
    cluster.kubectl(
        "-n", NAMESPACE, "patch", "configmap", "newsgroups-retraining-env", "--type", "merge",
        "-p", json.dumps({"data": {"FEEDBACK_SINCE": since}}),
    )  # fmt: skip
    return since


def service_url(cluster, service: str = SERVICE, port: int = 3000) -> str:
    ip = cluster.kubectl(
        "-n", NAMESPACE, "get", "service", service, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    return f"http://{ip}:{port}"


def send_labelled(cluster, items, tmp_path) -> dict:
    """Each text predicted through the Service, then its label sent as feedback (inside.py labelled)."""
    path = tmp_path / f"labelled-{uuid.uuid4().hex}.jsonl"
    path.write_text("".join(json.dumps({"text": i.text, "label": i.label}) + "\n" for i in items))
    result = cluster.in_netns(sys.executable, INSIDE, "labelled", service_url(cluster), path, timeout=600)
    sent = json.loads(result.stdout)
    assert sent["failed"] == [] and sent["feedback"] == len(items), sent
    return sent


@dataclass
class Traffic:
    """Steady predictions through the Service while something happens (inside.py traffic)."""

    process: subprocess.Popen

    @classmethod
    def start(cls, cluster) -> Traffic:
        command = [
            *cluster.enter(),
            sys.executable,
            INSIDE,
            "traffic",
            f"{service_url(cluster)}/predict",
            "900",
        ]
        return cls(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))

    def stop(self) -> dict:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=60)
        return json.loads(out)


def served_versions(cluster) -> set[str]:
    """The model version each ready pod answers with."""
    versions = set()
    for pod in ready_pods(cluster):
        answer = cluster.curl(
            "-X",
            "POST",
            "--data",
            "The goalie stopped the puck",
            f"http://{pod['status']['podIP']}:3000/predict",
        )
        versions.add(json.loads(answer.stdout)["model_version"])
    return versions


def rolled_out_to(cluster, version: str) -> bool:
    """The Deployment's latest template is rolled out (every pod made from it, all ready, no other pod
    left), and every ready pod serves `version`."""
    deployment = kubectl_json(cluster, "get", DEPLOYMENT)
    status = deployment["status"]
    return (
        status.get("observedGeneration") == deployment["metadata"]["generation"]
        and status.get("updatedReplicas") == status.get("replicas") == status.get("readyReplicas")
        and not status.get("terminatingReplicas")
        and served_versions(cluster) == {version}
    )


def make_in_node(cluster, *args: str) -> subprocess.CompletedProcess:
    """A make target as a user runs it, with kubectl pointed at the node's API server."""
    kubectl = f"{cluster.binaries['kubectl']} --kubeconfig {cluster.kubeconfig}"
    return cluster.in_netns(
        "make", "--no-print-directory", "-C", REPO, *args, f"KUBECTL={kubectl}", timeout=600
    )


def model_panel(cluster) -> list[str]:
    """The versions the model dashboard's "Model being served" panel shows."""
    (query,) = [t["expr"] for where, uid, t in dashboard_targets() if "Model being served" in where]
    return sorted(series["metric"]["model_version"] for series in promql(cluster, grafana_variables(query)))


def runs(cluster, outcome: str) -> float:
    """newsgroups_retraining_runs_total{outcome} as Prometheus has it (scraped from the trigger)."""
    found = promql(cluster, f'sum(newsgroups_retraining_runs_total{{outcome="{outcome}"}})')
    return float(found[0]["value"][1]) if found else 0.0


@pytest.fixture(scope="module")
def loop(deployed, observability):
    """The documented setting for the loop: the service logs its texts (LOG_TEXT=prefix, whole documents:
    docs/observability.md, the privacy trade-off), rolled out; the trigger ready."""
    cluster = deployed.cluster
    env = kubectl_json(cluster, "get", "configmap", "newsgroups-classifier-env")["data"]
    if (env["LOG_TEXT"], env["LOG_TEXT_CHARS"]) != ("prefix", "100000"):
        cluster.kubectl(
            "-n", NAMESPACE, "patch", "configmap", "newsgroups-classifier-env", "--type", "merge",
            "-p", json.dumps({"data": {"LOG_TEXT": "prefix", "LOG_TEXT_CHARS": "100000"}}),
        )  # fmt: skip
        cluster.kubectl("-n", NAMESPACE, "rollout", "restart", DEPLOYMENT)
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", DEPLOYMENT, "--timeout=300s", timeout=330)
    cluster.kubectl("-n", NAMESPACE, "rollout", "status", TRIGGER_DEPLOYMENT, "--timeout=300s", timeout=330)
    return deployed


@pytest.fixture(scope="module")
def test_documents(data_home):
    return load_split("test", data_home=data_home)


def test_a_drift_alert_retrains_gates_and_rolls_out_the_new_model_without_a_failed_request(
    loop, observability, test_documents, tmp_path
):
    cluster = loop.cluster
    start_from_nothing(cluster)
    before_tag = serving_tag(cluster)
    before_version = before_tag.split(":")[1]
    published_before = runs(cluster, "published")
    assert model_panel(cluster) == [before_version]

    # Skewed traffic (70% hockey) with a true label for every prediction.
    items = feedback_scenarios.skewed_true(test_documents)
    sent_at = time.time()
    send_labelled(cluster, items, tmp_path)

    # The drift alert -> Alertmanager's model route -> the trigger -> a Job, annotated with the alert.
    job = poll_until(
        lambda: next(
            (
                j
                for j in jobs(cluster)
                if j["metadata"]["annotations"].get("newsgroups-classifier/triggered-by")
            ),
            None,
        ),
        timeout=600,
        interval=2,
        what="the trigger to start a retraining Job for the drift alert",
    )
    name = job["metadata"]["name"]
    (decision,) = [d for d in trigger_decisions(cluster) if d.get("job") == name]
    assert decision["decision"] == "started" and decision["status"] == "firing"
    assert set(decision["alertnames"]) <= set(DRIFT_ALERTS), decision
    # The same notification reached the model route's other receiver, the owners' webhook (the stand-in).
    posted = [n["body"] for n in observability.notifications() if n["body"]["receiver"] == "model"]
    fingerprints = {alert["fingerprint"] for body in posted for alert in body["alerts"]}
    assert set(decision["fingerprints"]) <= fingerprints, (decision, fingerprints)
    alert_to_job = time.time() - sent_at

    # The Job: export, train, gate, publish, point MODEL_TAG at the candidate, annotate the pod template.
    traffic = Traffic.start(cluster)
    try:
        job, condition = wait_finished(cluster, name)
        assert condition["type"] == "Complete", f"{condition}\n{job_log(cluster, name)}"
        events = job_events(cluster, name)
        outcome = events["retraining_finished"]
        assert outcome["outcome"] == "published" and outcome["feedback"]["labelled"] == len(items), outcome
        new_tag = outcome["candidate_tag"]
        new_version = new_tag.split(":")[1]
        assert serving_tag(cluster) == new_tag != before_tag
        template = kubectl_json(cluster, "get", DEPLOYMENT)["spec"]["template"]
        assert template["metadata"]["annotations"][MODEL_TAG_ANNOTATION] == new_tag

        # The rollout (the Job started it as it ended): every pod replaced, each serving the new version.
        poll_until(lambda: rolled_out_to(cluster, new_version), timeout=600, interval=2, what="the rollout")
        completed = datetime.fromisoformat(job["status"]["completionTime"])
        rollout_seconds = time.time() - completed.timestamp()
    finally:
        result = traffic.stop()
    assert result["failed"] == [], result
    assert result["model_versions"] == [before_version, new_version], result

    # Prometheus: the model panel shows the switch, and the trigger counted the run.
    poll_until(lambda: model_panel(cluster) == [new_version], timeout=180, interval=5, what="the model panel")
    poll_until(
        lambda: runs(cluster, "published") >= published_before + 1, timeout=120, interval=5, what="the run"
    )
    new_pod = ready_pods(cluster)[0]["metadata"]["name"]
    init_log = cluster.kubectl("-n", NAMESPACE, "logs", new_pod, "-c", "fetch-model").stdout
    assert [json.loads(line)["model_tag"] for line in init_log.splitlines()] == [new_tag]

    job_seconds = (completed - datetime.fromisoformat(job["status"]["startTime"])).total_seconds()
    print(
        f"\nretraining: alert -> Job {alert_to_job:.0f} s after the traffic, Job {job_seconds:.0f} s, "
        f"rollout {rollout_seconds:.0f} s, {result['ok']} requests during it, 0 failed; "
        f"gate {json.dumps(outcome['gate'])}"
    )

    # Back: one command serves the previous version, again without a failed request.
    traffic = Traffic.start(cluster)
    try:
        make_in_node(cluster, "rollback", f"MODEL_VERSION={before_version}")
        poll_until(lambda: rolled_out_to(cluster, before_version), timeout=600, interval=2, what="rollback")
    finally:
        result = traffic.stop()
    assert result["failed"] == [] and result["model_versions"] == [new_version, before_version], result
    assert serving_tag(cluster) == before_tag


def test_shuffled_feedback_is_refused_by_the_gate_and_nothing_rolls_out(
    loop, observability, test_documents, tmp_path
):
    cluster = loop.cluster
    start_from_nothing(cluster)
    before_tag = serving_tag(cluster)
    deployment = kubectl_json(cluster, "get", DEPLOYMENT)
    before_pods = {p["metadata"]["name"] for p in ready_pods(cluster)}
    refused_before = runs(cluster, "refused")

    items = feedback_scenarios.shuffled(test_documents)
    sent = send_labelled(cluster, items, tmp_path)
    # The Job reads what reached Loki's address: every feedback event first.
    poll_until(
        lambda: set(sent["prediction_ids"]) <= shipped_feedback(observability),
        timeout=120,
        interval=2,
        what="the feedback events at Loki's address",
    )
    made = make_in_node(cluster, "retrain")
    (name,) = [w.split("/")[1] for w in made.stdout.split() if w.startswith("job.batch/")]

    job, condition = wait_finished(cluster, name)
    assert (condition["type"], condition["reason"]) == ("Failed", "PodFailurePolicy"), (
        f"{condition}\n{job_log(cluster, name)}"
    )
    outcome = job_events(cluster, name)["retraining_finished"]
    assert outcome["outcome"] == "refused" and outcome["reason"].startswith("test split:"), outcome
    assert outcome["feedback"]["labelled"] == len(items)
    gate = outcome["gate"]
    assert (
        gate["candidate"]["test_macro_f1"]
        < gate["serving"]["test_macro_f1"] - RETRAINING.gate_test_macro_f1_tolerance
    )
    (pod,) = json.loads(
        cluster.kubectl("-n", NAMESPACE, "get", "pods", "-l", f"job-name={name}", "-o", "json").stdout
    )["items"]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["message"].startswith("refused: test split:")

    # Nothing rolled out: the same version named, the same pod template, the same pods.
    assert serving_tag(cluster) == before_tag
    after = kubectl_json(cluster, "get", DEPLOYMENT)
    assert after["metadata"]["generation"] == deployment["metadata"]["generation"]
    assert {p["metadata"]["name"] for p in ready_pods(cluster)} == before_pods
    # Visible in Prometheus: the trigger counted the refusal.
    poll_until(
        lambda: runs(cluster, "refused") >= refused_before + 1, timeout=120, interval=5, what="the refusal"
    )
    print(f"\nrefusal: gate {json.dumps(gate)}")


def shipped_feedback(observability) -> set[str]:
    ids = set()
    for record in observability.loki().log_records():
        if '"event":"feedback"' in record.body:
            ids.add(json.loads(record.body)["prediction_id"])
    return ids


def notification(status: str, fingerprint: str) -> dict:
    """Alertmanager's webhook payload (version 4) with one alert."""
    alert = {
        "status": status,
        "labels": {"alertname": DRIFT_ALERTS[0], "severity": "model", "namespace": NAMESPACE},
        "annotations": {},
        "startsAt": datetime.now(UTC).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": f"test/{fingerprint}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "model",
        "groupLabels": {},
        "commonLabels": alert["labels"],
        "commonAnnotations": {},
        "externalURL": "",
        "alerts": [alert],
    }


def post_to_trigger(cluster, payload: dict) -> dict:
    url = service_url(cluster, "newsgroups-retraining-trigger", TRIGGER.trigger_port) + ALERTS_PATH
    out = cluster.curl(
        "-X", "POST", "-H", "Content-Type: application/json", "--data", json.dumps(payload), url
    )
    return json.loads(out.stdout)


def test_the_trigger_starts_one_job_at_a_time_keeps_its_cooldown_and_ignores_resolved_alerts(loop):
    cluster = loop.cluster
    start_from_nothing(cluster)  # from now: no feedback, so the Job ends fast (refused: nothing to learn)
    fingerprint = secrets.token_hex(8)
    firing, resolved = notification("firing", fingerprint), notification("resolved", fingerprint)

    started = post_to_trigger(cluster, firing)
    assert started["decision"] == "started", started
    assert post_to_trigger(cluster, firing)["decision"] == "skipped_running"
    wait_finished(cluster, started["job"])
    assert post_to_trigger(cluster, firing)["decision"] == "skipped_cooldown"
    assert post_to_trigger(cluster, resolved) == {"decision": "ignored_resolved", "job": ""}
    assert [j["metadata"]["name"] for j in jobs(cluster)] == [started["job"]]

    mine = [d for d in trigger_decisions(cluster) if fingerprint in d.get("fingerprints", [])]
    assert [d["decision"] for d in mine] == [
        "started",
        "skipped_running",
        "skipped_cooldown",
        "ignored_resolved",
    ]
    assert mine[0]["job"] == started["job"]


CAN_I = re.compile(r"^\s*(\S+)?\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")


def can_i(cluster, account: str) -> set[tuple[str, str, str]]:
    """(resource, name, verb) the API server lets the service account do in the namespace, beyond what every
    authenticated account may (reviews of itself, discovery: the non-resource URLs)."""
    listed = cluster.kubectl(
        "auth", "can-i", "--list", "-n", NAMESPACE, f"--as=system:serviceaccount:{NAMESPACE}:{account}"
    ).stdout.splitlines()[1:]
    allowed = set()
    for line in listed:
        found = CAN_I.match(line)  # a non-resource URL's line has a column less
        if found and found[1] and not found[1].startswith("selfsubject"):
            allowed |= {(found[1], found[3], verb) for verb in found[4].split()}
    return allowed


def test_each_service_account_may_do_exactly_what_its_program_does(loop):
    cluster = loop.cluster
    assert can_i(cluster, "newsgroups-retraining") == {
        ("configmaps", RETRAINING.model_configmap, "get"),
        ("configmaps", RETRAINING.model_configmap, "patch"),
        ("deployments.apps", RETRAINING.deployment, "patch"),
    }
    assert can_i(cluster, "newsgroups-retraining-trigger") == {
        ("cronjobs.batch", TRIGGER.retraining_cronjob, "get"),
        ("jobs.batch", "", "create"),
        ("jobs.batch", "", "get"),
        ("jobs.batch", "", "list"),
    }
    # And the API server refuses the rest, e.g. the service's other settings.
    refused = cluster.kubectl(
        "auth", "can-i", "patch", "configmap/newsgroups-classifier-env", "-n", NAMESPACE,
        "--as=system:serviceaccount:newsgroups:newsgroups-retraining", check=False,
    )  # fmt: skip
    assert refused.stdout.strip() == "no"


def test_the_pods_serve_the_version_the_configmap_names_fetched_from_the_store_not_the_image(loop):
    cluster = loop.cluster
    tag = serving_tag(cluster)
    assert served_versions(cluster) == {tag.split(":")[1]}
    for pod in ready_pods(cluster):
        name = pod["metadata"]["name"]
        init_log = cluster.kubectl("-n", NAMESPACE, "logs", name, "-c", "fetch-model").stdout
        assert [json.loads(line)["event"] for line in init_log.splitlines()] == ["fetched"]
        # The image holds the service, no model: the only one is in the pod's emptyDir.
        run = ("-n", NAMESPACE, "exec", name, "-c", "newsgroups-classifier", "--")
        bento = cluster.kubectl(*run, "find", "/home/bentoml/bento", "-name", "saved_model.pkl").stdout
        assert bento.strip() == ""
        home = cluster.kubectl(*run, "ls", "/var/lib/bentoml/models/newsgroups_classifier").stdout.split()
        assert sorted(home) == sorted([tag.split(":")[1], "latest"])
