"""Where the alerts go: Alertmanager's configuration as the Prometheus chart renders it from our values
(alertmanager.config), checked by the pinned amtool, against the alerts of every rule file (hand-written
and generated). Every alert reaches the receiver its severity names, the inhibitions name alerts that
exist, every alert carries a summary, a runbook section of docs/runbooks.md and a dashboard that exist, and
the webhook address is the Secret `make cluster-up` creates. (Delivery itself: tests/cluster.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from newsgroups_classifier.retraining_trigger import ALERTS_PATH
from support.charts import render, run
from support.deploy_files import created_secrets, dashboards, find_manifest, merged, rules
from support.paths import REPO
from support.processes import built_tool

RUNBOOKS = REPO / "docs" / "runbooks.md"
SEVERITIES = ("page", "ticket", "model")


@pytest.fixture(scope="module")
def amtool() -> Path:
    return built_tool("tests/e2e/stack/build.sh", "amtool", "make stack-bin")


@pytest.fixture(scope="module")
def config_file(releases, helm, tmp_path_factory) -> Path:
    """alertmanager.yml as the chart writes it into Alertmanager's ConfigMap."""
    (configmap,) = [
        doc
        for doc in render(releases["prometheus"], helm)
        if doc["kind"] == "ConfigMap" and "alertmanager.yml" in doc.get("data", {})
    ]
    path = tmp_path_factory.mktemp("alertmanager") / "alertmanager.yml"
    path.write_text(configmap["data"]["alertmanager.yml"])
    return path


def alerts() -> list[dict]:
    return [rule for rule in rules() if "alert" in rule]


def test_amtool_accepts_the_rendered_configuration(amtool, config_file):
    result = run([amtool, "check-config", config_file])
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def receivers_of(amtool, config_file, labels: dict) -> list[str]:
    words = [f"{name}={value}" for name, value in labels.items()]
    result = run([amtool, "config", "routes", "test", f"--config.file={config_file}", *words])
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_every_alert_reaches_the_receiver_of_its_severity(amtool, config_file):
    assert {alert["labels"]["severity"] for alert in alerts()} == set(SEVERITIES)
    for alert in alerts():
        labels = {"alertname": alert["alert"], "namespace": "newsgroups", **alert["labels"]}
        assert receivers_of(amtool, config_file, labels) == [alert["labels"]["severity"]], labels


def test_an_alert_of_unknown_severity_is_still_ticketed(amtool, config_file):
    assert receivers_of(amtool, config_file, {"alertname": "SomethingNew", "severity": "info"}) == ["ticket"]


def test_alerts_are_grouped_by_name_and_namespace(config_file):
    route = yaml.safe_load(config_file.read_text())["route"]
    assert route["group_by"] == ["alertname", "namespace"]
    assert all("group_by" not in child for child in route["routes"])  # every route groups alike


def matcher_selects(matcher: str, alert: dict) -> bool:
    name, op, value = re.fullmatch(r'(\w+)(=~|=)"(.*)"', matcher).groups()
    actual = alert["alert"] if name == "alertname" else alert["labels"].get(name, "")
    return bool(re.fullmatch(value, actual)) if op == "=~" else actual == value


def test_every_inhibition_involves_alerts_that_exist(config_file):
    inhibitions = yaml.safe_load(config_file.read_text())["inhibit_rules"]
    for inhibition in inhibitions:
        for side in ("source_matchers", "target_matchers"):
            (matcher,) = inhibition[side]
            selected = [alert["alert"] for alert in alerts() if matcher_selects(matcher, alert)]
            assert selected, f"{side} {matcher} selects no alert"
    # While a classifier target is down or absent, its drift, accuracy and latency alerts stay quiet.
    target_down = {"alert": "NewsgroupsClassifierTargetDown", "labels": {"severity": "ticket"}}
    silenced = {
        alert["alert"]
        for alert in alerts()
        for inhibition in inhibitions
        if matcher_selects(inhibition["source_matchers"][0], target_down)
        and matcher_selects(inhibition["target_matchers"][0], alert)
    }
    assert silenced == {
        "NewsgroupsClassDrift",
        "NewsgroupsConfidenceDrift",
        "NewsgroupsEmptyInputShareHigh",
        "NewsgroupsLiveAccuracyLow",
        "NewsgroupsPredictLatencyBudgetBurn",
        "NewsgroupsPredictBatchLatencyBudgetBurn",
    }


def anchor(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's) gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """Anchor -> text of every alert's section (### headings) of docs/runbooks.md."""
    parts = re.split(r"^### (.+)$", RUNBOOKS.read_text(), flags=re.M)
    return {anchor(heading): text for heading, text in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_alert_has_a_summary_a_runbook_section_and_a_dashboard():
    sections = runbook_sections()
    panels = {board["uid"]: {panel["id"] for panel in board["panels"]} for board in dashboards().values()}
    for alert in alerts():
        name, annotations = alert["alert"], alert["annotations"]
        assert annotations.get("summary"), name
        assert annotations["runbook_url"] == f"docs/runbooks.md#{anchor(name)}", name
        text = sections[anchor(name)]
        assert all(part in text for part in ("**Means:**", "1. ", "2. ", "3. ", "Silence:")), name
        link = annotations["dashboard_url"]
        uid, panel = re.fullmatch(r"/d/([\w-]+)(?:\?viewPanel=(\d+))?", link).groups()
        assert uid in panels and (panel is None or int(panel) in panels[uid]), (name, link)


def trigger_url() -> str:
    """The retraining trigger's address: its Service in manifests/, the path it serves."""
    service = find_manifest("Service", "newsgroups-retraining-trigger")
    (port,) = service["spec"]["ports"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    return f"http://{host}:{port['port']}{ALERTS_PATH}"


def test_every_runbook_section_is_an_alert():
    assert set(runbook_sections()) == {anchor(alert["alert"]) for alert in alerts()}


def test_receivers_post_to_the_secrets_webhook_address_and_model_also_to_the_retraining_trigger(
    releases, config_file
):
    alertmanager = merged(releases["prometheus"])["alertmanager"]
    (mount,) = alertmanager["extraSecretMounts"]
    receivers = yaml.safe_load(config_file.read_text())["receivers"]
    assert {receiver["name"] for receiver in receivers} == set(SEVERITIES)
    for receiver in receivers:
        webhook, *others = receiver["webhook_configs"]
        assert webhook == {"url_file": f"{mount['mountPath']}/url"}, receiver
        assert others == ([{"url": trigger_url()}] if receiver["name"] == "model" else []), receiver
    secrets = {(ns, name): keys for ns, name, keys in created_secrets()}
    assert secrets[(releases["prometheus"].namespace, mount["secretName"])] == {"url"}
