"""The retraining trigger's rules (retraining_trigger.py), on Alertmanager's documented webhook payload and
on Jobs as the API server reports them; the trigger's HTTP service and the Jobs it starts run in the
cluster tier (tests/cluster/test_retraining.py)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from newsgroups_classifier.config import TriggerSettings
from newsgroups_classifier.retraining import EXIT_REFUSED
from newsgroups_classifier.retraining_trigger import (
    JOB_LABEL,
    JobState,
    Notification,
    decide,
    job_from_template,
    outcome_of,
)
from support.deploy_files import manifest_documents

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
COOLDOWN = 3600


def alert(status: str, fingerprint: str, name: str = "NewsgroupsClassDrift") -> dict:
    """One alert of Alertmanager's webhook payload (version 4), as its documentation lists the fields."""
    return {
        "status": status,
        "labels": {"alertname": name, "severity": "model", "namespace": "newsgroups"},
        "annotations": {"summary": "Predicted class shares drifted"},
        "startsAt": "2026-12-07T11:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-12-07T11:30:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def payload(status: str, *alerts: dict) -> dict:
    return {
        "version": "4",
        "groupKey": '{}/{severity="model"}:{alertname="NewsgroupsClassDrift", namespace="newsgroups"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "model",
        "groupLabels": {"alertname": "NewsgroupsClassDrift", "namespace": "newsgroups"},
        "commonLabels": {"alertname": "NewsgroupsClassDrift", "severity": "model"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def job(name: str, minutes_ago: float, outcome: str | None) -> JobState:
    return JobState(name, NOW - timedelta(minutes=minutes_ago), outcome)


def test_a_firing_notification_names_its_firing_alerts_by_fingerprint():
    notification = Notification.parse(
        payload(
            "firing", alert("firing", "aa11"), alert("resolved", "bb22"), alert("firing", "cc33", "Other")
        )
    )
    assert notification.status == "firing"
    assert notification.fingerprints == ["aa11", "cc33"]
    assert notification.alertnames == ["NewsgroupsClassDrift", "Other"]
    assert notification.group_key.startswith("{}/")


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"status": "firing", "alerts": []},  # no version
        {**payload("firing"), "version": "3"},
        {**payload("firing"), "status": "pending"},
        {**payload("firing"), "alerts": "none"},
    ],
)
def test_anything_but_a_version_4_payload_is_refused(body):
    with pytest.raises(ValueError):
        Notification.parse(body)


def test_a_resolved_notification_starts_nothing():
    resolved = Notification.parse(payload("resolved", alert("resolved", "aa11")))
    assert decide(resolved, [], NOW, COOLDOWN) == "ignored_resolved"


def test_a_firing_notification_starts_a_job_when_none_ran_in_the_cooldown():
    firing = Notification.parse(payload("firing", alert("firing", "aa11")))
    assert decide(firing, [], NOW, COOLDOWN) == "started"
    assert decide(firing, [job("old", 61, "refused")], NOW, COOLDOWN) == "started"


def test_at_most_one_job_runs_at_a_time():
    firing = Notification.parse(payload("firing", alert("firing", "aa11")))
    assert (
        decide(firing, [job("old", 600, "published"), job("now", 90, None)], NOW, COOLDOWN)
        == "skipped_running"
    )


def test_no_job_starts_within_the_cooldown_of_the_last_start():
    firing = Notification.parse(payload("firing", alert("firing", "aa11")))
    jobs = [job("older", 300, "published"), job("last", 59, "failed")]
    assert decide(firing, jobs, NOW, COOLDOWN) == "skipped_cooldown"


def job_status(*conditions: tuple[str, str]) -> dict:
    return {
        "metadata": {"name": "newsgroups-retraining-x", "creationTimestamp": "2026-12-07T11:59:00Z"},
        "status": {
            "conditions": [
                {"type": kind, "status": "True", "reason": reason, "message": ""}
                for kind, reason in conditions
            ]
        },
    }


def test_a_job_ends_published_refused_or_failed_by_its_terminal_condition():
    # Kubernetes 1.31+ adds SuccessCriteriaMet / FailureTarget before the terminal condition.
    assert (
        outcome_of(job_status(("SuccessCriteriaMet", "CompletionsReached"), ("Complete", ""))) == "published"
    )
    assert (
        outcome_of(job_status(("FailureTarget", "PodFailurePolicy"), ("Failed", "PodFailurePolicy")))
        == "refused"
    )
    assert outcome_of(job_status(("Failed", "BackoffLimitExceeded"))) == "failed"
    assert outcome_of(job_status(("Failed", "DeadlineExceeded"))) == "failed"
    assert outcome_of(job_status()) is None
    assert outcome_of(job_status(("FailureTarget", "PodFailurePolicy"))) is None  # still terminating
    assert JobState.of(job_status()).created == datetime(2026, 12, 7, 11, 59, tzinfo=UTC)


def shipped_cronjob() -> dict:
    (cronjob,) = [doc for _, doc in manifest_documents() if doc["kind"] == "CronJob"]
    return {**copy.deepcopy(cronjob), "metadata": {**cronjob["metadata"], "uid": "0b1c"}}


def test_the_job_is_the_shipped_template_owned_by_its_cronjob_and_found_by_the_trigger():
    cronjob = shipped_cronjob()
    notification = Notification.parse(payload("firing", alert("firing", "aa11"), alert("firing", "cc33")))
    made = job_from_template(cronjob, notification)
    assert made["spec"] == cronjob["spec"]["jobTemplate"]["spec"]
    assert made["metadata"]["generateName"] == f"{cronjob['metadata']['name']}-"
    assert made["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "name": cronjob["metadata"]["name"],
            "uid": "0b1c",
            "controller": True,
        }
    ]
    assert made["metadata"]["annotations"]["newsgroups-classifier/alert-fingerprints"] == "aa11,cc33"
    # The trigger lists the Jobs by this label: those it starts and those `make retrain` starts.
    assert (
        made["metadata"]["labels"][JOB_LABEL]
        == TriggerSettings().retraining_cronjob
        == cronjob["metadata"]["name"]
    )


def test_the_gates_refusal_is_what_the_shipped_pod_failure_policy_fails_the_job_on():
    spec = shipped_cronjob()["spec"]["jobTemplate"]["spec"]
    (refusal,) = [rule for rule in spec["podFailurePolicy"]["rules"] if rule["action"] == "FailJob"]
    (container,) = spec["template"]["spec"]["containers"]
    assert refusal["onExitCodes"] == {
        "containerName": container["name"],
        "operator": "In",
        "values": [EXIT_REFUSED],
    }
    # Jobs stay listed past the cooldown, which reads their start times.
    assert spec["ttlSecondsAfterFinished"] > TriggerSettings().retraining_cooldown_seconds
