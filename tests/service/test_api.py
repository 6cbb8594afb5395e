"""The prediction and feedback API, as users call it."""

from __future__ import annotations

import json
import subprocess

import requests

from newsgroups_classifier.data import DEFAULT_CATEGORIES

BASEBALL = "I go to the stadium and watch the pitcher throw strikes while the batter waits for a home run"
HOCKEY = "The goalie stopped the puck and the Rangers won the playoff game on ice"


def predict(url: str, text: str) -> dict:
    response = requests.post(f"{url}/predict", json={"text": text}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_curl_form_encoded_raw_text_is_predicted(service):
    # Exactly what the README tells users to run; curl --data sends application/x-www-form-urlencoded.
    output = subprocess.run(
        ["curl", "-sf", "-X", "POST", "--data", BASEBALL, f"{service.url}/predict"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert json.loads(output)["label"] == "rec.sport.baseball"


def test_text_plain_and_json_give_the_same_prediction(service):
    plain = requests.post(
        f"{service.url}/predict",
        data=HOCKEY.encode(),
        headers={"Content-Type": "text/plain; charset=utf-8"},
        timeout=10,
    ).json()
    as_json = predict(service.url, HOCKEY)
    assert plain["label"] == as_json["label"] == "rec.sport.hockey"
    assert plain["probabilities"] == as_json["probabilities"]
    assert set(as_json["probabilities"]) == set(DEFAULT_CATEGORIES)
    assert abs(sum(as_json["probabilities"].values()) - 1) < 1e-4
    assert as_json["confidence"] == max(as_json["probabilities"].values())
    assert len(as_json["model_version"]) == 16
    assert as_json["prediction_id"] != plain["prediction_id"]


def test_batch_predicts_each_text_in_order(service):
    response = requests.post(
        f"{service.url}/predict_batch", json={"texts": [BASEBALL, HOCKEY, BASEBALL]}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert [p["label"] for p in response.json()] == [
        "rec.sport.baseball",
        "rec.sport.hockey",
        "rec.sport.baseball",
    ]
    assert len({p["prediction_id"] for p in response.json()}) == 3


def test_feedback_is_recorded_once(service):
    prediction = predict(service.url, BASEBALL)
    body = {"prediction_id": prediction["prediction_id"], "label": "rec.sport.baseball"}
    first = requests.post(f"{service.url}/feedback", json=body, timeout=10)
    assert first.status_code == 200 and first.json() == {"status": "recorded", "correct": True}
    again = requests.post(f"{service.url}/feedback", json=body, timeout=10)
    assert again.status_code == 409 and again.json()["reason"] == "duplicate_id"


def test_feedback_for_a_wrong_prediction_counts_as_incorrect(service):
    prediction = predict(service.url, HOCKEY)
    body = {"prediction_id": prediction["prediction_id"], "label": "rec.autos"}
    response = requests.post(f"{service.url}/feedback", json=body, timeout=10)
    assert response.json() == {"status": "recorded", "correct": False}


def test_feedback_rejections_say_what_is_wrong(service):
    valid = predict(service.url, BASEBALL)["prediction_id"]
    payload, signature = valid.split(".")
    cases = {
        "not-an-id": (400, "malformed_id"),
        f"{payload}.{'A' * len(signature)}": (404, "unknown_id"),  # forged signature
        f"{payload[:-4]}AAAA.{signature}": (404, "unknown_id"),  # tampered payload
    }
    for prediction_id, (status, reason) in cases.items():
        response = requests.post(
            f"{service.url}/feedback", json={"prediction_id": prediction_id, "label": "rec.autos"}, timeout=10
        )
        assert (response.status_code, response.json()["reason"]) == (status, reason), prediction_id
        assert response.json()["error"]
    response = requests.post(
        f"{service.url}/feedback", json={"prediction_id": valid, "label": "sci.space"}, timeout=10
    )
    assert response.status_code == 422 and "sci.space" in response.json()["error"]


def test_the_liveness_probe_answers(service):
    assert requests.get(f"{service.url}/livez", timeout=5).status_code == 200


def test_a_missing_model_is_a_clear_startup_error(tmp_path):
    import os
    import sys
    from pathlib import Path

    from support.processes import free_port
    from support.service_process import SERVICE

    bentoml = str(Path(sys.executable).with_name("bentoml"))
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [bentoml, "serve", SERVICE, "--host", "127.0.0.1", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "newsgroups_classifier:latest is not in the BentoML model store" in result.stdout + result.stderr
    assert "make train" in result.stdout + result.stderr


def test_the_api_schema_shows_what_clients_send_and_nothing_internal(service):
    schema = requests.get(f"{service.url}/docs.json", timeout=10).json()
    assert "traceparent" not in str(schema)  # added to each text by the guard, not by clients
    body = schema["paths"]["/predict_batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    texts = body["properties"]["texts"]
    item = texts["items"]
    if "$ref" in item:
        item = schema["components"]["schemas"][item["$ref"].rsplit("/", 1)[-1]]
    assert body["required"] == ["texts"] and texts["type"] == "array" and item["type"] == "string"
    # and the documented body is accepted as documented
    response = requests.post(f"{service.url}/predict_batch", json={"texts": [HOCKEY, BASEBALL]}, timeout=10)
    assert response.headers["content-type"] == "application/json"
    assert [p["label"] for p in response.json()] == ["rec.sport.hockey", "rec.sport.baseball"]


def test_the_service_keeps_its_state_in_its_bentoml_home(service):
    # The feedback duplicate check and the stdout lock live in the BentoML home the service was given
    # (compat.bentoml_home), shared by its workers.
    assert (service.home / "feedback-seen.sqlite").is_file()
    assert (service.home / "stdout.lock").is_file()
