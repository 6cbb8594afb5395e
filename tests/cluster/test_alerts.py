"""Alerts acted on, end to end in the real cluster: Prometheus evaluates our rules on what it scrapes from
the service's pods and sends the alerts to Alertmanager (the Prometheus chart's, configured by our values),
which groups, routes and inhibits them and posts notifications to the webhook address held in the Secret
`make cluster-up` makes: here the test suite's receiver (support/stand_ins.py) behind the Service
alert-webhook (stand-ins.yaml).

Test-only: every alert's `for:` is 15 s and the drift window 1 m (conftest.py, QUICK_RULES), and
Alertmanager waits 5 s before a group's first notification and 10 s between updates
(overlays/prometheus.yaml), so the whole story fits in a few minutes. Routes, grouping, inhibitions,
labels and annotations are the shipped ones.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from contextlib import contextmanager
from datetime import datetime

from support.cluster_service import NAMESPACE, SERVICE, at_rest, cluster_url
from support.cluster_stack import OBSERVABILITY, alertmanager_alerts, prometheus
from support.deploy_files import rules
from support.processes import poll_until

DRIFT = "NewsgroupsClassDrift"
TARGET_DOWN = "NewsgroupsClassifierTargetDown"
# Every prediction of this one class: the predicted class mix drifts from the training one at once.
HOCKEY = "The goalie stopped every shot in overtime of the playoff game."


def shipped(alert: str) -> dict:
    (rule,) = [rule for rule in rules() if rule.get("alert") == alert]
    return rule


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def rule_state(cluster, alert: str) -> str:
    groups = prometheus(cluster, "rules", type="alert")["groups"]
    (rule,) = [rule for group in groups for rule in group["rules"] if rule["name"] == alert]
    return rule["state"]


def quiet(cluster, *alerts: str) -> bool:
    """None of the alerts pending or firing in Prometheus, nor held by Alertmanager."""
    return all(rule_state(cluster, a) == "inactive" and not alertmanager_alerts(cluster, a) for a in alerts)


def notified(observability, alertname: str, status: str, after: float, **labels: str) -> tuple | None:
    """The first notification of the alert's group received after `after` that carries an alert with that
    status and labels, and that alert. (A group may hold alerts of other pods: with the test's 15 s
    `for:`, a pod that is still starting is a target that is down for a moment.)"""
    for n in observability.notifications():
        if n["received"] > after and n["body"]["groupLabels"].get("alertname") == alertname:
            for alert in n["body"]["alerts"]:
                if alert["status"] == status and labels.items() <= alert["labels"].items():
                    return n, alert
    return None


@contextmanager
def skewed_traffic(cluster):
    """Batches of 64 hockey texts every 2 s through the Service, until the block ends."""
    url = f"{cluster_url(cluster)}/predict_batch"
    body = json.dumps({"texts": [HOCKEY] * 64})
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            json_body = ("-H", "Content-Type: application/json", "--data", body)
            cluster.curl("-X", "POST", *json_body, url, check=False)
            stop.wait(2)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join()


@contextmanager
def scrapes_refused(cluster, pod: dict, source_ip: str):
    """Connections from `source_ip` (Prometheus) to the pod's port refused, by a rule in the pod's own
    network namespace: Prometheus cannot scrape the pod, which serves everyone else as before."""
    container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    tasks = cluster.in_netns("ctr", "--namespace", "k8s.io", "tasks", "ls").stdout.splitlines()
    (pid,) = [line.split()[1] for line in tasks if line.startswith(container)]
    port = str(pod["spec"]["containers"][0]["ports"][0]["containerPort"])
    refuse = ["-j", "REJECT", "--reject-with", "tcp-reset"]
    rule = ["INPUT", "-s", source_ip, "-p", "tcp", "--dport", port, *refuse]
    in_pod = ["nsenter", f"--target={pid}", "--net", "iptables"]
    subprocess.run([*in_pod, "-I", *rule], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([*in_pod, "-D", *rule], check=True, capture_output=True)


def test_alerts_reach_the_webhook_grouped_routed_inhibited_and_resolved(deployed, observability):
    cluster = deployed.cluster
    # Before: no scaling under way, and neither alert pending, firing or held (earlier traffic's drift
    # has left the window).
    (pod, *_) = at_rest(cluster)
    poll_until(lambda: quiet(cluster, DRIFT, TARGET_DOWN), timeout=300, interval=5, what="no alert")
    started = time.time()
    with skewed_traffic(cluster):
        # 1. Class drift: a notification for its group (alert name and namespace) to the model route,
        # with the labels and annotations the rule promises.
        firing, drift = poll_until(
            lambda: notified(observability, DRIFT, "firing", started),
            timeout=240,
            interval=2,
            what=f"a firing {DRIFT} notification",
        )
        assert firing["body"]["receiver"] == shipped(DRIFT)["labels"]["severity"] == "model", firing
        assert firing["body"]["groupLabels"] == {"alertname": DRIFT, "namespace": NAMESPACE}, firing
        assert drift["labels"]["severity"] == "model" and drift["labels"]["model_version"], drift
        annotations = shipped(DRIFT)["annotations"]
        assert {k: drift["annotations"][k] for k in ("runbook_url", "dashboard_url")} == {
            k: annotations[k] for k in ("runbook_url", "dashboard_url")
        }
        assert drift["labels"]["model_version"] in drift["annotations"]["summary"], drift
        drift_delivered = firing["received"] - seconds(drift["startsAt"])

        # 2. Prometheus cannot scrape one pod: the target-down notification (to the ticket route), and
        # Alertmanager holds the drift alert of the same namespace as inhibited by it.
        name = pod["metadata"]["name"]
        (server,) = json.loads(
            cluster.kubectl(
                "-n", OBSERVABILITY, "get", "pods", "-l", "app.kubernetes.io/component=server", "-o", "json"
            ).stdout
        )["items"]
        blocked = time.time()
        with scrapes_refused(cluster, pod, server["status"]["podIP"]):
            down, target = poll_until(
                lambda: notified(observability, TARGET_DOWN, "firing", blocked, pod=name),
                timeout=180,
                interval=2,
                what=f"a firing {TARGET_DOWN} notification for {name}",
            )
            assert down["body"]["receiver"] == "ticket", down["body"]
            assert target["labels"]["app_kubernetes_io_name"] == SERVICE, target
            (source,) = [a for a in alertmanager_alerts(cluster, TARGET_DOWN) if a["labels"]["pod"] == name]
            (held,) = poll_until(
                lambda: [a for a in alertmanager_alerts(cluster, DRIFT) if a["status"]["inhibitedBy"]],
                timeout=30,
                what="the drift alert inhibited",
            )
            assert held["status"]["state"] == "suppressed", held["status"]
            assert source["fingerprint"] in held["status"]["inhibitedBy"], (source, held["status"])
            assert not notified(observability, DRIFT, "firing", firing["received"])
        unblocked = time.time()
    # 3. Both resolve: the scrapes succeed again, and the skew leaves the drift window.
    down_resolved, target = poll_until(
        lambda: notified(observability, TARGET_DOWN, "resolved", unblocked, pod=name),
        timeout=180,
        interval=2,
        what=f"the resolved {TARGET_DOWN} notification",
    )
    drift_resolved, drift = poll_until(
        lambda: notified(observability, DRIFT, "resolved", unblocked),
        timeout=240,
        interval=2,
        what=f"the resolved {DRIFT} notification",
    )
    assert drift_resolved["body"]["receiver"] == "model", drift_resolved
    print(
        f"alerts: skew -> {DRIFT} notified {firing['received'] - started:.0f} s "
        f"({drift_delivered:.0f} s after Prometheus fired it); scrapes refused -> {TARGET_DOWN} notified "
        f"{down['received'] - blocked:.0f} s; resolved notifications "
        f"{down_resolved['received'] - seconds(target['endsAt']):.0f} s and "
        f"{drift_resolved['received'] - seconds(drift['endsAt']):.0f} s after Prometheus resolved them; "
        f"the test {time.time() - started:.0f} s"
    )
