"""Locust load test of the classifier: `locust --config load_testing/locust.conf --host http://...`.

Users send documents from the real test split: mostly single predictions, some small batches, the
true label back as feedback for a share of predictions (so the live-accuracy panels fill), and a
small share of bad inputs, each of which must get its 4xx. At the end the run fails (exit code 1)
when any request failed or a valid endpoint's p95 is over --max-p95-ms.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass

from locust import FastHttpUser, between, events, task
from locust.env import Environment

from newsgroups_classifier.config import Settings
from newsgroups_classifier.local_config import shipped_service_env
from support.workload import documents, use_project_defaults

use_project_defaults()
DOCS = documents()
LIMITS = Settings(**shipped_service_env())  # the input limits (MAX_BODY_BYTES, ...) the ConfigMap ships
BAD_INPUT = "bad input: "  # name prefix of the requests that must be rejected
logger = logging.getLogger("loadtest")


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    group = parser.add_argument_group("newsgroups classifier")
    group.add_argument(
        "--max-p95-ms", type=float, default=300, help="fail when a valid endpoint's p95 is over"
    )
    group.add_argument(
        "--feedback-share", type=float, default=0.3, help="share of predictions given feedback"
    )
    group.add_argument("--max-batch-texts", type=int, default=8, help="batch requests carry 1 to this many")


@dataclass(frozen=True)
class BadInput:
    path: str
    body: bytes
    content_type: str
    status: int


def bad_inputs() -> dict[str, BadInput]:
    """Requests the service must reject, with the status each must get."""
    json_type = "application/json"
    too_many = json.dumps({"texts": DOCS.texts[: LIMITS.max_batch_size + 1]}).encode()
    return {
        "blank text": BadInput("/predict", b'{"text": "  \\n "}', json_type, 400),
        "malformed JSON": BadInput("/predict", b'{"text": "unterminated', json_type, 400),
        "not UTF-8": BadInput("/predict", b"caf\xe9 racer", "text/plain", 400),
        "unsupported type": BadInput("/predict", b"<p>hello</p>", "text/html", 415),
        "body over the limit": BadInput("/predict", b"a" * (LIMITS.max_body_bytes + 1), "text/plain", 413),
        "batch over the limit": BadInput("/predict_batch", too_many, json_type, 413),
        "forged prediction id": BadInput(
            "/feedback", b'{"prediction_id": "Zm9yZ2Vk.bm90LXNpZ25lZA", "label": "rec.autos"}', json_type, 404
        ),
    }


BAD_INPUTS = bad_inputs()


class ClassifierUser(FastHttpUser):
    wait_time = between(0.1, 0.5)

    @task(10)
    def predict(self) -> None:
        index = random.randrange(len(DOCS.texts))
        with self.client.post("/predict", json={"text": DOCS.texts[index]}, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            prediction = response.json()
        if random.random() < self.environment.parsed_options.feedback_share:
            self.feedback(prediction["prediction_id"], DOCS.labels[index])

    def feedback(self, prediction_id: str, true_label: str) -> None:
        body = {"prediction_id": prediction_id, "label": true_label}
        with self.client.post("/feedback", json=body, catch_response=True) as response:
            if response.status_code != 200 or response.json().get("status") != "recorded":
                response.failure(f"status {response.status_code}: {response.text[:200]}")

    @task(2)
    def predict_batch(self) -> None:
        texts = random.sample(DOCS.texts, random.randint(1, self.environment.parsed_options.max_batch_texts))
        with self.client.post("/predict_batch", json={"texts": texts}, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
            elif len(response.json()) != len(texts):
                response.failure(f"{len(texts)} texts but {len(response.json())} predictions")

    @task(1)
    def bad_input(self) -> None:
        name, case = random.choice(list(BAD_INPUTS.items()))
        with self.client.post(
            case.path,
            data=case.body,
            headers={"Content-Type": case.content_type},
            name=BAD_INPUT + name,
            catch_response=True,
        ) as response:
            if response.status_code == case.status:
                response.success()  # the rejection is the expected outcome
            else:
                response.failure(f"expected status {case.status}, got {response.status_code}")


def threshold_failures(environment: Environment) -> list[str]:
    """Why the run fails: failed requests, a valid endpoint's p95 over the bound, or no traffic."""
    stats, options = environment.stats, environment.parsed_options
    problems = []
    if stats.total.num_requests == 0:
        problems.append("no request was made")
    for entry in stats.entries.values():
        if entry.num_failures:
            problems.append(f"{entry.name}: {entry.num_failures} of {entry.num_requests} requests failed")
        p95 = entry.get_response_time_percentile(0.95)
        if not entry.name.startswith(BAD_INPUT) and entry.num_requests and p95 > options.max_p95_ms:
            problems.append(f"{entry.name}: p95 {p95} ms is over the bound of {options.max_p95_ms:g} ms")
    return problems


@events.quitting.add_listener
def check_thresholds(environment: Environment, **_kwargs) -> None:
    problems = threshold_failures(environment)
    for problem in problems:
        logger.error("threshold failed: %s", problem)
    if problems:
        environment.process_exit_code = 1
    else:
        logger.info(
            "thresholds met: no failed request, every valid endpoint's p95 within %g ms",
            environment.parsed_options.max_p95_ms,
        )
