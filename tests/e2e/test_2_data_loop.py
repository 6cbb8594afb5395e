"""The data loop against the real Loki: logged predictions and feedback become a labelled dataset."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import requests
import stack as st

from helpers import model_dirs, poll_until, start_server


@pytest.fixture(scope="module")
def loop(stack, models_home, documents):
    """A second pod with text logging on (the documented setting for the loop), and its traffic."""
    pod_log = stack.workdir / "pods" / f"{st.NAMESPACE}_{st.POD}-loop" / st.APP / "0.log"
    pod_log.parent.mkdir(parents=True)
    started = datetime.now(UTC)
    service = start_server(
        models_home,
        stack.workdir,
        sample_rate=0.0,
        cri_log=pod_log,
        env={"LOG_TEXT": "prefix", "LOG_TEXT_CHARS": "100000"},
    )
    stack.extra_services.append(service)
    sent = []
    for i in range(12):
        label = sorted(documents)[i % 4]
        text = documents[label][200 + i]
        prediction = requests.post(f"{service.url}/predict", json={"text": text}, timeout=10).json()
        sent.append({"text": text, "true_label": label, **prediction})
    labelled = {}
    for record in sent[:5]:  # one of them deliberately labelled differently from the prediction
        truth = "rec.autos" if record is sent[0] and record["label"] != "rec.autos" else record["true_label"]
        body = {"prediction_id": record["prediction_id"], "label": truth}
        assert requests.post(f"{service.url}/feedback", json=body, timeout=10).status_code == 200
        labelled[record["prediction_id"]] = truth
    selector = f'{{namespace="{st.NAMESPACE}", app="{st.APP}", event="feedback"}}'
    ids = set(labelled)

    def feedback_in_loki() -> bool:
        now = time.time_ns()
        response = requests.get(
            f"{stack.loki.url}/loki/api/v1/query_range",
            params={"query": selector, "start": now - 600 * 10**9, "end": now, "limit": 1000},
            timeout=10,
        )
        lines = [line for stream in response.json()["data"]["result"] for _, line in stream["values"]]
        return ids <= {json.loads(line)["prediction_id"] for line in lines}

    poll_until(feedback_in_loki, timeout=90, interval=2, what="the feedback events in Loki")
    return {"since": started.isoformat(), "sent": sent, "labelled": labelled, "service": service}


def export(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "newsgroups_classifier.export", "--loki-url", stack.loki.url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_export_holds_exactly_those_predictions_with_their_labels(stack, loop, tmp_path):
    output = tmp_path / "feedback.jsonl"
    result = export(
        stack, "--since", loop["since"], "--output", str(output), "--page-size", "5"
    )  # forces paging
    assert result.returncode == 0, result.stderr
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
        assert len(record["trace_id"]) == 32
    correct = sum(1 for pid, truth in loop["labelled"].items() if sent[pid]["label"] == truth)
    assert "records: 12" in result.stdout and "labelled: 5 (41.7%)" in result.stdout
    assert f"accuracy on the labelled share: {correct / 5:.4f}" in result.stdout


def test_selection_for_labelling(stack, loop, tmp_path):
    output = tmp_path / "to-label.jsonl"
    result = export(
        stack,
        "--since",
        loop["since"],
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


def test_training_with_the_export_changes_the_model_and_reports_both_evaluations(
    stack, loop, tmp_path, models_home, train
):
    output = tmp_path / "feedback.jsonl"
    assert export(stack, "--since", loop["since"], "--output", str(output)).returncode == 0
    result = train(tmp_path / "home", "--extra-data", str(output))
    assert "before extra data:" in result.stdout and "+5 labelled records" in result.stdout
    assert "test split:" in result.stdout
    (old,), (new,) = model_dirs(models_home), model_dirs(tmp_path / "home")
    assert new.name != old.name


def test_bad_input_gives_a_clear_message_and_no_file(stack, loop, tmp_path):
    output = tmp_path / "out.jsonl"
    cases = {
        "unreachable": (["--loki-url", "http://127.0.0.1:9", "--since", "1h"], "unreachable"),
        "reversed range": (["--since", "1h", "--until", "2h"], "is not before"),
        "unparsable time": (["--since", "yesterday"], "bad time"),
        "empty result": (["--since", "1h", "--selector", '{app="no-such-app"}'], "no prediction events"),
    }
    for name, (args, message) in cases.items():
        result = export(stack, *args, "--output", str(output))
        assert result.returncode == 1, name
        assert message in result.stderr, (name, result.stderr)
        assert not output.exists() and not list(tmp_path.iterdir()), name


def test_a_malformed_line_is_reported(stack, loop, tmp_path):
    now = time.time_ns()
    stream = {"namespace": st.NAMESPACE, "app": st.APP, "event": "prediction"}
    push = {"streams": [{"stream": stream, "values": [[str(now), '{"event":"prediction", broken']]}]}
    assert requests.post(f"{stack.loki.url}/loki/api/v1/push", json=push, timeout=10).status_code == 204
    since = datetime.fromtimestamp(now / 1e9 - 1, UTC).isoformat()

    def exported(*extra: str) -> subprocess.CompletedProcess:
        return poll_until(
            lambda: (r := export(stack, "--since", since, *extra)) and "malformed" in r.stderr and r,
            timeout=30,
            interval=1,
            what="the malformed line to be read",
        )

    strict = exported("--strict", "--output", str(tmp_path / "strict.jsonl"))
    assert strict.returncode == 1 and "1 malformed line" in strict.stderr
    assert not (tmp_path / "strict.jsonl").exists()
