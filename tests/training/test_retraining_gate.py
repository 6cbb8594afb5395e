"""The retraining Job's candidate and gate (retraining.py, gate.py) on the real data and the trained model,
with the gate's rules as manifests/retraining.yaml sets them: a candidate that learned true feedback on
skewed traffic is published, one that learned shuffled labels is refused. The whole Job (export from
Loki's address, the model store, the rollout) runs in the cluster tier."""

from __future__ import annotations

import joblib
import pytest

from newsgroups_classifier.config import RetrainingSettings
from newsgroups_classifier.data import load_split
from newsgroups_classifier.gate import GateRules
from newsgroups_classifier.retraining import Feedback, labelled_feedback, train_and_gate
from newsgroups_classifier.training import TrainingConfig
from support import feedback_scenarios
from support.deploy_files import find_manifest
from support.service_process import model_dirs


@pytest.fixture(scope="module")
def rules() -> GateRules:
    settings = RetrainingSettings(**find_manifest("ConfigMap", "newsgroups-retraining-env")["data"])
    return GateRules(
        settings.gate_test_macro_f1_tolerance,
        settings.gate_feedback_accuracy_tolerance,
        settings.gate_min_holdout_labels,
    )


@pytest.fixture(scope="module")
def serving(models_home):
    (directory,) = model_dirs(models_home)
    return joblib.load(directory / "saved_model.pkl")


def feedback(serving, items) -> Feedback:
    records = [
        {"prediction_id": f"prediction-{i}", "true_label": item.label, "text": item.text}
        for i, item in enumerate(items)
    ]
    return labelled_feedback(records, [str(c) for c in serving.classes_])


def test_a_candidate_that_learned_true_feedback_on_skewed_traffic_is_published(serving, rules, data_home):
    test = load_split("test", data_home=data_home)
    learned = feedback(serving, feedback_scenarios.skewed_true(test))
    result = train_and_gate(serving, TrainingConfig(), learned, rules, data_home)
    verdict = result.verdict
    assert verdict.publish, verdict.as_fields()
    assert verdict.holdout_labels >= rules.min_holdout_labels  # both comparisons were made
    # The test split the models are compared on is the whole split less what the candidate learned.
    assert set(result.test.texts) == set(test.texts) - set(learned.learn.texts)
    assert result.train.texts[-len(learned.learn.texts) :] == learned.learn.texts


def test_a_candidate_that_learned_shuffled_labels_is_refused_on_the_test_split(serving, rules, data_home):
    items = feedback_scenarios.shuffled(load_split("test", data_home=data_home))
    wrong = sum(item.label != truth for item, truth in zip(items, truths(items, data_home), strict=True))
    assert wrong > len(items) / 2
    verdict = train_and_gate(serving, TrainingConfig(), feedback(serving, items), rules, data_home).verdict
    assert not verdict.publish
    assert verdict.reasons[0].startswith("test split:"), verdict.reasons
    margin = verdict.serving.test_macro_f1 - verdict.candidate.test_macro_f1 - rules.test_macro_f1_tolerance
    assert margin > 0.005, verdict.as_fields()  # refused by far more than the tolerance, not by noise


def truths(items, data_home) -> list[str]:
    test = load_split("test", data_home=data_home)
    label_of = dict(zip(test.texts, test.labels, strict=True))
    return [label_of[item.text] for item in items]
