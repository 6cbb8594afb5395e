"""Training on the real archive: quality gate, evaluation report, reproducibility, drift baseline."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest

from newsgroups_classifier.data import ALL_CATEGORIES, DEFAULT_CATEGORIES, load_split
from newsgroups_classifier.drift_signals import HISTOGRAM_SIGNALS
from newsgroups_classifier.model import predict_proba, tokenize, vectorize
from support.service_process import model_dirs, train_cli


@pytest.fixture(scope="module")
def model_dir(models_home) -> Path:
    (directory,) = model_dirs(models_home)
    return directory


def test_the_report_has_per_class_scores_and_a_consistent_confusion_matrix(model_dir):
    report = json.loads((model_dir / "evaluation.json").read_text())
    assert report["samples"] == 1590
    assert set(report["per_class"]) == set(DEFAULT_CATEGORIES)
    matrix = np.array(report["confusion_matrix"]["matrix"])
    assert matrix.sum() == 1590
    assert np.trace(matrix) / matrix.sum() == pytest.approx(report["accuracy"])


def test_saved_model_loads_back_and_predicts_the_same_labels(model_dir, data_home):
    report = json.loads((model_dir / "evaluation.json").read_text())
    pipeline = joblib.load(model_dir / "saved_model.pkl")
    test = load_split("test", data_home=data_home)
    predicted = pipeline.predict([tokenize(text) for text in test.texts])
    labels = report["confusion_matrix"]["labels"]
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for truth, guess in zip(test.labels, predicted, strict=True):
        matrix[labels.index(truth), labels.index(guess)] += 1
    assert matrix.tolist() == report["confusion_matrix"]["matrix"]


def test_metadata_records_labels_metrics_fingerprint_and_versions(model_dir):
    import yaml

    info = yaml.safe_load((model_dir / "model.yaml").read_text())
    metadata = info["metadata"]
    assert metadata["labels"] == sorted(DEFAULT_CATEGORIES)
    assert len(metadata["training_data_sha256"]) == 64
    assert metadata["macro_f1"] == json.loads((model_dir / "evaluation.json").read_text())["macro_f1"]
    assert {"scikit_learn", "numpy", "bentoml", "python"} <= set(metadata)


def test_same_data_gives_the_same_model(model_dir, tmp_path, train, data_home):
    train(tmp_path)
    (again,) = model_dirs(tmp_path)
    assert again.name == model_dir.name  # the version is derived from data and settings
    first, second = joblib.load(model_dir / "saved_model.pkl"), joblib.load(again / "saved_model.pkl")
    sample = [tokenize(text) for text in load_split("test", data_home=data_home).texts[:200]]
    assert np.array_equal(first.predict_proba(sample), second.predict_proba(sample))


def test_baseline_is_a_valid_reference(model_dir):
    baseline = json.loads((model_dir / "baseline.json").read_text())
    assert sum(baseline["class_share"].values()) == pytest.approx(1.0)
    assert 0 <= baseline["empty_share"] < 0.05
    assert set(baseline["histograms"]) == set(HISTOGRAM_SIGNALS)
    for name, histogram in baseline["histograms"].items():
        edges, cdf = histogram["edges"], histogram["cdf"]
        assert len(edges) == len(cdf) >= 5, name
        assert all(a < b for a, b in zip(edges, edges[1:], strict=False)), f"{name} edges must increase"
        assert all(a <= b for a, b in zip(cdf, cdf[1:], strict=False)), f"{name} CDF must be monotone"
        assert 0 <= cdf[0] and cdf[-1] <= 1


def test_quality_gate_fails_training_and_saves_nothing(tmp_path, train):
    result = train(tmp_path, "--min-macro-f1", "0.99", check=False)
    assert result.returncode == 2
    assert "below the floor 0.99" in result.stderr
    assert not (tmp_path / "models" / "newsgroups_classifier").exists()


def test_keeping_headers_is_a_different_model(model_dir, tmp_path, train):
    result = train(tmp_path, "--keep-headers")
    (other,) = model_dirs(tmp_path)
    assert other.name != model_dir.name
    assert "macro-F1" in result.stdout


def test_extra_data_with_a_label_outside_the_models_classes_is_refused(tmp_path, train):
    extra = tmp_path / "extra.jsonl"
    extra.write_text(
        json.dumps({"text": "The shuttle reached orbit", "true_label": "sci.space"})
        + "\n"
        + json.dumps({"text": "A new exhaust for my bike", "true_label": "rec.motorcycles"})
        + "\n"
    )
    result = train(tmp_path / "home", "--extra-data", str(extra), check=False)
    assert result.returncode == 1
    assert "extra.jsonl:1: label 'sci.space' is not one of the model's classes" in result.stderr
    assert not (tmp_path / "home" / "models" / "newsgroups_classifier").exists()


def test_unknown_category_is_an_error_listing_valid_names(tmp_path):
    result = train_cli(tmp_path, "--categories", "rec.autos,rec.skiing", check=False)
    assert result.returncode == 1
    assert "unknown categories: rec.skiing" in result.stderr
    assert all(name in result.stderr for name in ALL_CATEGORIES)


def test_missing_archive_says_how_to_provide_it(tmp_path):
    result = train_cli(tmp_path, "--data-archive", str(tmp_path / "nope.tar.gz"), check=False)
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "NEWSGROUPS_ARCHIVE" in result.stderr


def test_the_services_model_calls_give_exactly_the_pipelines_probabilities(model_dir, data_home):
    # The service skips scikit-learn's per-call input checks (model.TRUSTED_INPUT): same numbers, bit
    # for bit, on the whole test split.
    pipeline = joblib.load(model_dir / "saved_model.pkl")
    tokens = [tokenize(text) for text in load_split("test", data_home=data_home).texts]
    features, _ = vectorize(pipeline, tokens)
    assert np.array_equal(predict_proba(pipeline, features), pipeline.predict_proba(tokens))
