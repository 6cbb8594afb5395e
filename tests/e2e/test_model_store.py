"""The model store (model_store.py) against a real S3 server, versitygw, standing in for MinIO (AGPL-3.0,
never run here): what `make publish-model` uploads, the pods' init container fetches into an empty
BentoML home, from which the service (whose image holds no model) serves that version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from support.s3_store import S3Store, start_store
from support.service_process import model_dirs, scrape, start_server, value

MODEL = "newsgroups_classifier"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[S3Store]:
    running = start_store(tmp_path_factory.mktemp("s3"))
    yield running
    running.stop()


def model_store(store: S3Store, home: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m newsgroups_classifier.model_store ...` with its own BentoML home, as the Makefile and
    the init container run it."""
    env = {**os.environ, **store.env(), "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    return subprocess.run(
        [sys.executable, "-m", "newsgroups_classifier.model_store", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def events(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stderr.splitlines()]


def test_a_published_version_is_fetched_into_an_empty_home_and_served_from_there(
    store, models_home, tmp_path
):
    (directory,) = model_dirs(models_home)
    tag = f"{MODEL}:{directory.name}"
    published = model_store(store, models_home, "publish")
    assert published.returncode == 0, published.stderr
    assert published.stdout.strip() == tag  # `latest`, resolved: what MODEL_TAG is set to
    assert f"{MODEL}/{directory.name}.bentomodel" in store.objects()

    empty = tmp_path / "pod-home"
    fetched = model_store(store, empty, "fetch", tag)
    assert fetched.returncode == 0, fetched.stderr
    assert [e["event"] for e in events(fetched)] == ["fetched"]
    assert {p.name for p in (empty / "models" / MODEL / directory.name).iterdir()} >= {
        "saved_model.pkl",
        "model.yaml",
        "evaluation.json",
        "baseline.json",
    }

    server = start_server(empty, tmp_path / "service", sample_rate=0.0)
    try:
        answer = requests.post(f"{server.url}/predict", data="The goalie stopped the puck", timeout=10).json()
        assert answer["model_version"] == directory.name
        assert value(scrape(server.url), "newsgroups_model_info", model_version=directory.name) == 1
    finally:
        server.stop()


def test_publishing_a_version_again_uploads_nothing_and_every_version_stays(
    store, models_home, train, tmp_path
):
    assert model_store(store, models_home, "publish").returncode == 0
    again = model_store(store, models_home, "publish")
    assert again.returncode == 0 and [e["uploaded"] for e in events(again)] == [False]
    other_home = tmp_path / "other"
    train(other_home, "--categories", "rec.autos,rec.motorcycles")
    (other,) = model_dirs(other_home)
    assert model_store(store, other_home, "publish").returncode == 0
    listed = model_store(store, models_home, "list")
    versions = [line.split()[0] for line in listed.stdout.splitlines()]
    (first,) = model_dirs(models_home)
    assert versions[0] == f"{MODEL}:{other.name}" and f"{MODEL}:{first.name}" in versions  # newest first


def test_fetching_a_version_the_store_lacks_fails_and_says_how_to_fix_it(store, tmp_path):
    missing = model_store(store, tmp_path / "home", "fetch", f"{MODEL}:0000000000000000")
    assert missing.returncode == 1
    (error,) = events(missing)
    assert (
        error["level"] == "error"
        and "is not in s3://" in error["error"]
        and "make publish-model" in error["error"]
    )
    latest = model_store(store, tmp_path / "home", "fetch", f"{MODEL}:latest")
    assert latest.returncode == 1 and "needs a version" in events(latest)[0]["error"]


def test_an_unreachable_store_fails_the_fetch_with_its_address(tmp_path):
    env = {
        "MODEL_STORE_ENDPOINT": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "BENTOML_HOME": str(tmp_path),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    result = subprocess.run(
        [sys.executable, "-m", "newsgroups_classifier.model_store", "fetch", f"{MODEL}:0000000000000000"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "http://127.0.0.1:9" in events(result)[0]["error"]
