"""The retraining trigger: the webhook Alertmanager's model route posts to, which starts the retraining
Job from its template, the suspended CronJob of manifests/retraining.yaml (as `make retrain` does).

    python -m newsgroups_classifier.retraining_trigger

    POST /alerts   Alertmanager's webhook payload (version "4")
    GET  /metrics  newsgroups_retraining_triggers_total{decision}, newsgroups_retraining_runs_total{outcome}
    GET  /healthz  alive;  GET /readyz  ready: the Jobs can be read (the API server answers)

A firing notification starts a Job unless one is running (at most one at a time) or the last one started
less than the cooldown ago; a resolved one starts nothing. Both rules read the Jobs in the cluster, so they
hold across restarts of the trigger and count Jobs started by hand. Every decision is one JSON line with
the alerts' fingerprints. Alertmanager retries a notification answered with a 5xx (the API unreachable).

A Job is short-lived and Prometheus scrapes only what lives, so the trigger counts how each retraining
ended (the Job's status: Complete is `published`; Failed by the podFailurePolicy rule on the gate's exit
status is `refused`; any other failure is `failed`) and exposes the counts: Jobs it sees finish while it
runs, whoever started them.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .config import TriggerSettings
from .kube import ApiError, Kube
from .logs import log_json

JOB_LABEL = "app.kubernetes.io/name"
DECISIONS = ("started", "skipped_running", "skipped_cooldown", "ignored_resolved", "invalid", "error")
OUTCOMES = ("published", "refused", "failed")
ALERTS_PATH = "/alerts"  # where Alertmanager posts (helm-config/prometheus/values.yaml)
MAX_BODY = 1024 * 1024
log = logging.getLogger("newsgroups_classifier.retraining_trigger")


@dataclass(frozen=True)
class JobState:
    name: str
    created: datetime
    outcome: str | None  # None while it runs

    @classmethod
    def of(cls, job: dict) -> JobState:
        created = datetime.fromisoformat(job["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
        return cls(job["metadata"]["name"], created, outcome_of(job))


def outcome_of(job: dict) -> str | None:
    """How a Job ended, from its terminal condition; None while it runs."""
    for condition in job.get("status", {}).get("conditions", []):
        if condition["status"] != "True":
            continue
        if condition["type"] == "Complete":
            return "published"
        if condition["type"] == "Failed":
            return "refused" if condition.get("reason") == "PodFailurePolicy" else "failed"
    return None


@dataclass(frozen=True)
class Notification:
    status: str
    fingerprints: list[str]
    alertnames: list[str]
    group_key: str

    @classmethod
    def parse(cls, payload: dict) -> Notification:
        """Alertmanager's webhook payload, version 4; ValueError if it is not one."""
        if not isinstance(payload, dict) or payload.get("version") != "4":
            raise ValueError("not an Alertmanager webhook payload of version 4")
        status, alerts = payload.get("status"), payload.get("alerts")
        if status not in ("firing", "resolved") or not isinstance(alerts, list):
            raise ValueError("status must be firing or resolved, and alerts a list")
        # The alerts of this status: a firing group can carry alerts that resolved meanwhile.
        current = [a for a in alerts if isinstance(a, dict) and a.get("status") == status]
        return cls(
            status,
            [str(a.get("fingerprint", "")) for a in current],
            sorted({str(a.get("labels", {}).get("alertname", "")) for a in current}),
            str(payload.get("groupKey", "")),
        )


def decide(notification: Notification, jobs: list[JobState], now: datetime, cooldown_seconds: int) -> str:
    """The trigger's rules, in order: nothing on a resolved notification; one Job at a time; a cooldown
    after the last start."""
    if notification.status == "resolved":
        return "ignored_resolved"
    if any(job.outcome is None for job in jobs):
        return "skipped_running"
    if jobs and (now - max(job.created for job in jobs)).total_seconds() < cooldown_seconds:
        return "skipped_cooldown"
    return "started"


def job_from_template(cronjob: dict, notification: Notification) -> dict:
    """A Job from the CronJob's jobTemplate, as `kubectl create job --from=cronjob/...` makes one (owned by
    the CronJob), annotated with what triggered it."""
    template = cronjob["spec"]["jobTemplate"]
    metadata = template.get("metadata", {})
    name = cronjob["metadata"]["name"]
    annotations = {
        **metadata.get("annotations", {}),
        "newsgroups-classifier/triggered-by": "alertmanager",
        "newsgroups-classifier/alert-fingerprints": ",".join(notification.fingerprints),
        "newsgroups-classifier/alert-names": ",".join(notification.alertnames),
    }
    owner = {"apiVersion": "batch/v1", "kind": "CronJob", "name": name, "uid": cronjob["metadata"]["uid"]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "generateName": f"{name}-",
            "labels": metadata.get("labels", {}),
            "annotations": annotations,
            "ownerReferences": [{**owner, "controller": True}],
        },
        "spec": template["spec"],
    }


class Trigger:
    """The decisions (one at a time) and the count of how Jobs ended."""

    def __init__(self, kube: Kube, settings: TriggerSettings) -> None:
        self.kube, self.settings = kube, settings
        self.namespace = kube.namespace
        self.lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "newsgroups_retraining_triggers",
            "Notifications the retraining trigger received, by what it decided",
            ["decision"],
            registry=self.registry,
        )
        self.runs = Counter(
            "newsgroups_retraining_runs",
            "Retraining Jobs that finished, by outcome (published, refused by the gate, failed)",
            ["outcome"],
            registry=self.registry,
        )
        for decision in DECISIONS:
            self.decisions.labels(decision)
        for outcome in OUTCOMES:
            self.runs.labels(outcome)
        self.counted: set[str] = set()

    def jobs(self) -> list[tuple[dict, JobState]]:
        cronjob = self.settings.retraining_cronjob
        listed = self.kube.get(
            f"/apis/batch/v1/namespaces/{self.namespace}/jobs", labelSelector=f"{JOB_LABEL}={cronjob}"
        )
        return [(job, JobState.of(job)) for job in listed["items"]]

    def handle(self, notification: Notification) -> tuple[str, str]:
        """Decide, and start a Job if that is the decision: (decision, Job name)."""
        if notification.status == "resolved":  # decided without asking the API server
            return decide(notification, [], datetime.now(UTC), self.settings.retraining_cooldown_seconds), ""
        with self.lock:
            states = [state for _, state in self.jobs()]
            decision = decide(
                notification, states, datetime.now(UTC), self.settings.retraining_cooldown_seconds
            )
            job = ""
            if decision == "started":
                path = f"/apis/batch/v1/namespaces/{self.namespace}"
                cronjob = self.kube.get(f"{path}/cronjobs/{self.settings.retraining_cronjob}")
                job = self.kube.post(f"{path}/jobs", job_from_template(cronjob, notification))["metadata"][
                    "name"
                ]
        return decision, job

    def record(
        self, decision: str, notification: Notification | None, job: str = "", error: str = ""
    ) -> None:
        self.decisions.labels(decision).inc()
        fields = {"decision": decision}
        if notification:
            fields |= {
                "status": notification.status,
                "fingerprints": notification.fingerprints,
                "alertnames": notification.alertnames,
                "group_key": notification.group_key,
            }
        fields |= {key: value for key, value in (("job", job), ("error", error)) if value}
        log.log(logging.ERROR if error else logging.INFO, "retraining_trigger", extra={"fields": fields})

    def watch(self, stop: threading.Event, first: bool = True) -> None:
        """Count each Job's outcome once, when it is first seen finished. Jobs that had finished before
        the trigger started were counted by the trigger that saw them (or by nobody, before it existed)."""
        while not stop.is_set():
            try:
                for job, state in self.jobs():
                    if state.outcome and state.name not in self.counted:
                        self.counted.add(state.name)
                        if not first:
                            self.runs.labels(state.outcome).inc()
                            log.info(
                                "retraining_finished",
                                extra={
                                    "fields": {"job": state.name, "outcome": state.outcome, **reason(job)}
                                },
                            )
                first = False
            except ApiError as exc:
                log.error("retraining_watch", extra={"fields": {"error": str(exc)}})
            stop.wait(self.settings.retraining_poll_seconds)


def reason(job: dict) -> dict:
    failed = [c for c in job.get("status", {}).get("conditions", []) if c["type"] == "Failed"]
    return {"reason": failed[0].get("reason", ""), "message": failed[0].get("message", "")} if failed else {}


def handler(trigger: Trigger) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path == "/metrics":
                self.answer(200, generate_latest(trigger.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self.answer(200, b"ok\n", "text/plain")
            elif self.path == "/readyz":
                try:
                    trigger.jobs()
                    self.answer(200, b"ok\n", "text/plain")
                except ApiError as exc:
                    self.answer(503, f"{exc}\n".encode(), "text/plain")
            else:
                self.answer(404, b'{"error":"not found"}', "application/json")

        def do_POST(self):  # noqa: N802
            if self.path != ALERTS_PATH:
                self.answer(404, b'{"error":"not found"}', "application/json")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= MAX_BODY:
                    raise ValueError(f"a body of 1 to {MAX_BODY} bytes is needed, not {length}")
                notification = Notification.parse(json.loads(self.rfile.read(length)))
            except ValueError as exc:  # JSONDecodeError included
                trigger.record("invalid", None, error=str(exc))
                self.answer(400, json.dumps({"error": str(exc)}).encode(), "application/json")
                return
            try:
                decision, job = trigger.handle(notification)
            except ApiError as exc:
                trigger.record("error", notification, error=str(exc))
                self.answer(503, json.dumps({"error": str(exc)}).encode(), "application/json")
                return
            trigger.record(decision, notification, job)
            self.answer(200, json.dumps({"decision": decision, "job": job}).encode(), "application/json")

        def answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # the decisions are logged, not the requests
            pass

    return Handler


def main() -> int:
    log_json()
    settings = TriggerSettings()
    trigger = Trigger(Kube.in_cluster(), settings)
    stop = threading.Event()
    threading.Thread(target=trigger.watch, args=(stop,), daemon=True, name="watch").start()
    server = ThreadingHTTPServer(("", settings.trigger_port), handler(trigger))
    log.info("listening", extra={"fields": {"port": settings.trigger_port}})
    try:
        server.serve_forever()
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
