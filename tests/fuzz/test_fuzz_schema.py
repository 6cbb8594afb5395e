"""Schemathesis against the OpenAPI schema the running service publishes (/docs.json).

Every operation, with schema-valid and schema-violating data, through each of schemathesis' phases
(coverage: each constraint's boundaries; fuzzing; stateful: predictions, then feedback on their ids,
following the schema's links), with all of its checks (no 5xx, valid data accepted, invalid data
rejected, every status and response as documented, an answer within a time limit) and ours (every 4xx
is the service's JSON error with one of its reasons). Configuration: schemathesis.toml beside this file.

Its command-line tool runs it (its pytest integration does not run under pytest 9): on a failure, its
report says how to reproduce each case (a curl command, `st replay`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.fuzzing import SEED, assert_still_well, counted_4xx, examples, snapshot
from support.paths import REPO

CONFIG = Path(__file__).with_name("schemathesis.toml")
CASES_PER_OPERATION = examples(100)


def sent_texts(entries: list[dict]) -> list[str]:
    """The texts of the requests sent, long enough not to be in the log by chance."""
    texts = []
    for entry in entries:
        body = entry["request"].get("postData", {}).get("text", "")
        try:
            data = json.loads(body)
        except ValueError:
            data = {"text": body}  # raw text
        if isinstance(data, dict):
            items = data.get("texts") if isinstance(data.get("texts"), list) else []
            texts += [text for text in [data.get("text"), *items] if isinstance(text, str)]
    return [text for text in texts if len(text.strip()) >= 12]


def test_schemathesis_finds_no_break_of_the_contract(fuzzed, tmp_path):
    before, counted_before = snapshot(fuzzed), counted_4xx(fuzzed.url)
    har, report = tmp_path / "requests.har", tmp_path / "report.json"
    command = [str(Path(sys.executable).with_name("st")), "--config-file", str(CONFIG), "run"]
    command += ["--seed", str(SEED), "--max-examples", str(CASES_PER_OPERATION), "--report", "har,json"]
    command += ["--report-har-path", str(har), "--report-json-path", str(report), f"{fuzzed.url}/docs.json"]
    run = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=600 + 5 * CASES_PER_OPERATION
    )
    assert run.returncode == 0, (
        f"schemathesis found failures (seed {SEED}):\n{run.stdout[-30000:]}{run.stderr}"
    )

    entries = json.loads(har.read_text())["log"]["entries"]
    generated = json.loads(report.read_text())["test_cases"]["generated"]
    print(f"schemathesis: {generated} cases generated, {len(entries)} requests sent")
    feedback = [
        e for e in entries if e["request"]["url"].endswith("/feedback") and e["response"]["status"] == 200
    ]
    assert feedback, "no feedback was accepted: the stateful phase did not follow the links from predictions"
    # Every 4xx answered is counted, once, as a rejection with its reason.
    (answered, rejected), (answered_before, rejected_before) = counted_4xx(fuzzed.url), counted_before
    assert answered > answered_before and rejected - rejected_before == answered - answered_before
    assert_still_well(fuzzed, before)
    log = "\n".join(fuzzed.log_lines()[before.lines :])
    leaked = [text for text in sent_texts(entries) if text in log]
    assert not leaked, f"{len(leaked)} texts sent are in the log, e.g. {leaked[0]!r}"
