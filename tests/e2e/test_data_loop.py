"""The data loop: logged predictions and feedback become a labelled dataset (`make export-feedback`).

The lines are the real service's, shipped by the real collector; Loki (AGPL-3.0) is never run, so these are
contract tests: the export's Loki client reads them from Loki's address, which answers Loki's documented
`query_range` API (paging included) from what the collector exported to it, ingested as Loki's OTLP
endpoint documents it (tests/support/loki_contract.py).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import requests

from support import stack as st
from support.load_driver import traceparent
from support.loki_contract import QUERY_RANGE, QueryApi
from support.processes import poll_until
from support.service_process import model_dirs, start_server


@pytest.fixture(scope="module")
def loki(stack) -> QueryApi:
    """Loki's query API over everything the collector has exported to Loki's address so far, served on
    that address as Loki does."""
    api = QueryApi(stack.loki_entries)
    stack.loki.read_api[QUERY_RANGE] = api
    yield api
    del stack.loki.read_api[QUERY_RANGE]


@pytest.fixture(scope="module")
def loki_url(stack, loki) -> str:
    return stack.loki.http_endpoint


@pytest.fixture(scope="module")
def loop(stack, models_home, documents):
    """A second pod with text logging on (the documented setting for the loop), and its traffic."""
    pod = f"{st.POD}-loop"
    pod_log = stack.pod_log(pod)
    started = datetime.now(UTC)
    service = start_server(
        models_home,
        stack.workdir,
        otlp_endpoint=stack.service.env["OTEL_EXPORTER_OTLP_ENDPOINT"],
        sample_rate=0.0,  # only the callers' sampled traces
        cri_log=pod_log,
        env={
            "LOG_TEXT": "prefix",
            "LOG_TEXT_CHARS": "100000",
            "POD_NAME": pod,
            "POD_NAMESPACE": st.NAMESPACE,
        },
    )
    stack.extra_services.append(service)
    sent = []
    for i in range(12):  # every other one in a caller's sampled trace
        label = sorted(documents)[i % 4]
        text, trace_id = documents[label][200 + i], secrets.token_hex(16) if i % 2 else None
        headers = traceparent(trace_id) if trace_id else {}
        response = requests.post(f"{service.url}/predict", json={"text": text}, headers=headers, timeout=10)
        sent.append({"text": text, "true_label": label, "trace_id": trace_id, **response.json()})
    labelled = {}
    for record in sent[:5]:  # one of them deliberately labelled differently from the prediction
        truth = "rec.autos" if record is sent[0] and record["label"] != "rec.autos" else record["true_label"]
        body = {"prediction_id": record["prediction_id"], "label": truth}
        assert requests.post(f"{service.url}/feedback", json=body, timeout=10).status_code == 200
        labelled[record["prediction_id"]] = truth

    def feedback_shipped() -> bool:
        events = [e for e in stack.loki_entries() if e.labels.get("pod") == pod and e.labels.get("event")]
        shipped = {json.loads(e.line)["prediction_id"] for e in events if e.labels["event"] == "feedback"}
        return set(labelled) <= shipped

    poll_until(feedback_shipped, timeout=90, interval=1, what="the feedback events at Loki's address")
    return {"since": started.isoformat(), "sent": sent, "labelled": labelled, "pod_log": pod_log}


def export(loki_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "newsgroups_classifier.export", "--loki-url", loki_url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_contract_export_holds_exactly_those_predictions_with_their_labels(loki, loki_url, loop, tmp_path):
    """Contract: paging through Loki's query_range (5 lines a page), the export gets every prediction of
    the pod once, with its text, prediction and feedback."""
    output = tmp_path / "feedback.jsonl"
    before = len(loki.queries)
    result = export(loki_url, "--since", loop["since"], "--output", str(output), "--page-size", "5")
    assert result.returncode == 0, result.stderr
    assert len(loki.queries) - before >= 4, "the export did not page"
    records = [json.loads(line) for line in output.read_text().splitlines()]
    sent = {record["prediction_id"]: record for record in loop["sent"]}
    assert sorted(r["prediction_id"] for r in records) == sorted(sent)
    for record in records:
        original = sent[record["prediction_id"]]
        assert record["text"] == original["text"]
        assert record["predicted_label"] == original["label"]
        assert record["confidence"] == original["confidence"]
        assert record["model_version"] == original["model_version"]
        assert record["true_label"] == loop["labelled"].get(record["prediction_id"])
        assert record["trace_id"] == original["trace_id"]  # its trace, when it was traced
    correct = sum(1 for pid, truth in loop["labelled"].items() if sent[pid]["label"] == truth)
    assert "records: 12" in result.stdout and "labelled: 5 (41.7%)" in result.stdout
    assert f"accuracy on the labelled share: {correct / 5:.4f}" in result.stdout


def test_contract_the_export_selects_the_classifier_by_the_labels_both_agents_set(
    loki, loki_url, loop, tmp_path
):
    """Contract: the default selector (namespace and container labels, the same with Promtail) is what the
    export asks Loki for, and it finds the loop pod's events among every pod's lines."""
    output = tmp_path / "all.jsonl"
    assert export(loki_url, "--since", loop["since"], "--output", str(output)).returncode == 0
    (query,) = {q["query"] for q in loki.queries[-1:]}
    assert query.startswith('{namespace="newsgroups", container="newsgroups-classifier"}')
    exported = {json.loads(line)["prediction_id"] for line in output.read_text().splitlines()}
    assert {r["prediction_id"] for r in loop["sent"]} <= exported


def test_contract_selection_for_labelling(loki_url, loop, tmp_path):
    output = tmp_path / "to-label.jsonl"
    result = export(
        loki_url,
        "--since",
        loop["since"],
        "--selector",
        f'{{namespace="{st.NAMESPACE}", pod="{st.POD}-loop"}}',
        "--output",
        str(output),
        "--select-least-confident",
        "3",
        "--select-random",
        "2",
    )
    assert result.returncode == 0, result.stderr
    selected = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(selected) == 5 and all(r["true_label"] is None for r in selected)
    unlabelled = sorted(r["confidence"] for r in loop["sent"] if r["prediction_id"] not in loop["labelled"])
    assert [r["confidence"] for r in selected[:3]] == unlabelled[:3]
    assert [r["selected_because"] for r in selected] == ["least_confident"] * 3 + ["random"] * 2


def test_contract_training_with_the_export_changes_the_model_and_reports_both_evaluations(
    loki_url, loop, tmp_path, models_home, train
):
    output = tmp_path / "feedback.jsonl"
    selector = f'{{namespace="{st.NAMESPACE}", pod="{st.POD}-loop"}}'
    assert (
        export(loki_url, "--since", loop["since"], "--selector", selector, "--output", str(output)).returncode
        == 0
    )
    result = train(tmp_path / "home", "--extra-data", str(output))
    assert "before extra data:" in result.stdout and "+5 labelled records" in result.stdout
    assert "test split:" in result.stdout
    (old,), (new,) = model_dirs(models_home), model_dirs(tmp_path / "home")
    assert new.name != old.name


def test_contract_bad_input_gives_a_clear_message_and_no_file(loki_url, loop, tmp_path):
    output = tmp_path / "out.jsonl"
    cases = {
        "unreachable": (["--loki-url", "http://127.0.0.1:9", "--since", "1h"], "unreachable"),
        "reversed range": (["--since", "1h", "--until", "2h"], "is not before"),
        "unparsable time": (["--since", "yesterday"], "bad time"),
        "empty result": (
            ["--since", "1h", "--selector", '{container="no-such-app"}'],
            "no prediction events",
        ),
    }
    for name, (args, message) in cases.items():
        result = export(loki_url, *args, "--output", str(output))
        assert result.returncode == 1, name
        assert message in result.stderr, (name, result.stderr)
        assert not output.exists() and not list(tmp_path.iterdir()), name


def test_contract_a_malformed_line_is_reported(stack, loki_url, loop, tmp_path):
    """A broken line in the pod's log file, as a runtime writes it, shipped by the collector."""
    since = datetime.fromtimestamp(time.time() - 1, UTC).isoformat()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with open(loop["pod_log"], "a") as log:
        log.write(f'{stamp} stdout F {{"event":"prediction", broken\n')

    def exported(*extra: str) -> subprocess.CompletedProcess:
        return poll_until(
            lambda: (r := export(loki_url, "--since", since, *extra)) and "malformed" in r.stderr and r,
            timeout=30,
            interval=1,
            what="the malformed line to be read",
        )

    strict = exported("--strict", "--output", str(tmp_path / "strict.jsonl"))
    assert strict.returncode == 1 and "1 malformed line" in strict.stderr
    assert not (tmp_path / "strict.jsonl").exists()
