"""The quality gate's rule (gate.py) and how the retraining Job splits the exported feedback
(retraining.py); the gate on real models: tests/training/test_retraining.py."""

from __future__ import annotations

from newsgroups_classifier.data import Split
from newsgroups_classifier.gate import GateRules, Scores, decide
from newsgroups_classifier.retraining import held_out, labelled_feedback, without

RULES = GateRules(test_macro_f1_tolerance=0.005, feedback_accuracy_tolerance=0.02, min_holdout_labels=30)


def test_a_candidate_within_the_tolerance_of_the_serving_model_is_published():
    verdict = decide(Scores(0.886, 0.90), Scores(0.8815, 0.885), 40, RULES)
    assert verdict.publish and verdict.reasons == []


def test_a_candidate_worse_on_the_test_split_is_refused_and_says_why():
    verdict = decide(Scores(0.886), Scores(0.880), 0, RULES)
    assert not verdict.publish
    (reason,) = verdict.reasons
    assert "test split" in reason and "0.8800" in reason and "0.8860" in reason


def test_a_candidate_worse_on_the_held_out_feedback_is_refused_when_there_are_enough_labels():
    assert not decide(Scores(0.886, 0.90), Scores(0.890, 0.87), 30, RULES).publish
    # Too few held-out labels: that comparison is not made.
    assert decide(Scores(0.886, 0.90), Scores(0.890, 0.50), 29, RULES).publish


def test_both_reasons_are_given_when_both_comparisons_fail():
    verdict = decide(Scores(0.886, 0.90), Scores(0.85, 0.60), 100, RULES)
    assert [reason.split(":")[0] for reason in verdict.reasons] == ["test split", "feedback"]
    assert verdict.as_fields()["candidate"] == {"test_macro_f1": 0.85, "feedback_accuracy": 0.60}


def record(prediction_id: str, label: str | None, text: str | None = "some text") -> dict:
    return {"prediction_id": prediction_id, "true_label": label, "text": text, "predicted_label": "rec.autos"}


def test_feedback_is_split_by_prediction_id_and_only_labelled_texts_count():
    classes = ["rec.autos", "rec.sport.hockey"]
    records = [record(f"id-{i}", "rec.autos", f"text {i}") for i in range(300)]
    records += [
        record("no-label", None),
        record("no-text", "rec.autos", None),
        record("blank", "rec.autos", "  "),
    ]
    records += [record("other-class", "sci.space")]
    feedback = labelled_feedback(records, classes)
    assert feedback.as_fields() == {
        "records": 304,
        "labelled": 303,
        "learned": len(feedback.learn.texts),
        "held_out": len(feedback.holdout.texts),
    }
    assert len(feedback.learn.texts) + len(feedback.holdout.texts) == 300
    assert 70 < len(feedback.holdout.texts) < 130  # about a third
    held = {text for text in feedback.holdout.texts}
    assert held == {f"text {i}" for i in range(300) if held_out(f"id-{i}")}
    again = labelled_feedback(list(reversed(records)), classes)
    assert sorted(again.holdout.texts) == sorted(feedback.holdout.texts)  # whatever the order


def test_the_test_split_loses_exactly_the_documents_the_candidate_learned():
    test = Split(["a", "b", "c", "b"], ["x", "y", "z", "y"])
    assert without(test, ["b", "q"]) == Split(["a", "c"], ["x", "z"])
