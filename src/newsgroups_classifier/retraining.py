"""The retraining Job (manifests/retraining.yaml): export the labelled predictions, train a candidate with
them, gate it against the serving model, and publish and roll out the candidate that passes.

    python -m newsgroups_classifier.retraining

1. The serving version is the one the model ConfigMap names (MODEL_TAG); it is fetched from the model store.
2. The data loop's export (export.py) reads the prediction and feedback events from Loki; labelled
   records with text are the new data, a third of them (chosen by prediction id) held out for the gate.
3. The candidate is trained on the base training split plus the rest, as `make train EXTRA_DATA=...`.
4. The gate (gate.py) compares both models on the test split less the documents the candidate learned
   from, and on the held-out feedback.
5. A candidate that passes is published to the model store, MODEL_TAG is pointed at it, and the
   Deployment's pod template is annotated with it, which rolls the pods out.

Exit status: 0 published; 3 refused by the gate (the Job's podFailurePolicy then fails it at once, with
the reason PodFailurePolicy, which the trigger counts as `refused`); anything else is an error (counted as
`failed`). Each step and the outcome are JSON lines on stdout; the outcome is also the container's
termination message (`kubectl describe pod`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import bentoml
from sklearn.pipeline import Pipeline

from . import export
from .config import RetrainingSettings, StoreSettings
from .data import DataUnavailableError, Split, load_split
from .gate import GateRules, Scores, Verdict, decide
from .kube import MERGE_PATCH, ApiError, Kube
from .logs import log_json
from .model_store import ModelStore, StoreError
from .training import QualityGateError, TrainingConfig, drift_baseline, evaluate, fit, save

EXIT_REFUSED = 3
# The Deployment's pod template carries the version its pods serve: changing it is the rollout.
MODEL_TAG_ANNOTATION = "newsgroups-classifier/model-tag"
ARCHIVE_NAME = "20news-bydate.tar.gz"
TERMINATION_LOG = Path("/dev/termination-log")
HOLDOUT_SHARE = 3  # one labelled record in three is held out
log = logging.getLogger("newsgroups_classifier.retraining")


class Refused(RuntimeError):
    """Nothing to publish: the gate said no, or there is nothing new to learn from."""


@dataclass(frozen=True)
class Feedback:
    learn: Split
    holdout: Split
    records: int
    labelled: int

    def as_fields(self) -> dict:
        return {
            "records": self.records,
            "labelled": self.labelled,
            "learned": len(self.learn.texts),
            "held_out": len(self.holdout.texts),
        }


def held_out(prediction_id: str) -> bool:
    """Stable across runs and replicas: a hash of the prediction id."""
    return hashlib.sha256(prediction_id.encode()).digest()[0] % HOLDOUT_SHARE == 0


def labelled_feedback(records: list[dict], classes: list[str]) -> Feedback:
    """The exported records that can teach: labelled with one of the model's classes, with text."""
    learn, holdout = Split([], []), Split([], [])
    labelled = 0
    for record in records:
        label, text = record.get("true_label"), record.get("text")
        labelled += label is not None
        if label in classes and text and text.strip():
            part = holdout if held_out(record["prediction_id"]) else learn
            part.texts.append(text)
            part.labels.append(label)
    return Feedback(learn, holdout, len(records), labelled)


def export_records(settings: RetrainingSettings) -> list[dict]:
    """The data loop's export: every prediction of the window, joined with its feedback."""
    client = export.LokiClient(settings.loki_url, settings.loki_tenant)
    start_ns, end_ns = export.time_range(settings.feedback_since, None)
    dataset = export.Dataset()
    query = f"{settings.loki_selector} {export.EVENT_FILTER}"
    for line in export.read_lines(client, query, start_ns, end_ns):
        dataset.add(line)
    return dataset.records()


def training_data_archive(data_home: Path) -> Path | None:
    """An archive put in the training-data volume is used (offline clusters); otherwise scikit-learn's
    cache there, or its download into it."""
    archive = data_home / ARCHIVE_NAME
    return archive if archive.is_file() else None


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def without(split: Split, texts: list[str]) -> Split:
    """`split` less the documents whose text is among `texts`."""
    excluded = {text_hash(text) for text in texts}
    kept = [(t, y) for t, y in zip(split.texts, split.labels, strict=True) if text_hash(t) not in excluded]
    return Split([t for t, _ in kept], [y for _, y in kept])


def scores(pipeline: Pipeline, test: Split, holdout: Split) -> Scores:
    feedback_accuracy = round(evaluate(pipeline, holdout)["accuracy"], 6) if holdout.texts else None
    return Scores(round(evaluate(pipeline, test)["macro_f1"], 6), feedback_accuracy)


@dataclass(frozen=True)
class Candidate:
    pipeline: Pipeline
    train: Split
    test: Split
    verdict: Verdict


def train_and_gate(
    serving: Pipeline, config: TrainingConfig, feedback: Feedback, rules: GateRules, data_home: Path
) -> Candidate:
    """Train the candidate on the base training split and the learned feedback; gate it on the test
    split less what it learned (live documents may come from anywhere) and on the held-out feedback."""
    archive = training_data_archive(data_home)
    base = load_split("train", config.categories, config.strip, archive, data_home)
    test = without(
        load_split("test", config.categories, config.strip, archive, data_home), feedback.learn.texts
    )
    train = Split(base.texts + feedback.learn.texts, base.labels + feedback.learn.labels)
    candidate = fit(train)
    verdict = decide(
        scores(serving, test, feedback.holdout),
        scores(candidate, test, feedback.holdout),
        len(feedback.holdout.texts),
        rules,
    )
    return Candidate(candidate, train, test, verdict)


def roll_out(kube: Kube, settings: RetrainingSettings, tag: str, resource_version: str) -> None:
    """Point MODEL_TAG at `tag`, unless the ConfigMap changed since it was read (a rollback meanwhile:
    the API server refuses a patch whose resourceVersion is stale), then roll the pods out."""
    namespace = kube.namespace
    kube.patch(
        f"/api/v1/namespaces/{namespace}/configmaps/{settings.model_configmap}",
        {"metadata": {"resourceVersion": resource_version}, "data": {"MODEL_TAG": tag}},
        MERGE_PATCH,
    )
    kube.patch(
        f"/apis/apps/v1/namespaces/{namespace}/deployments/{settings.deployment}",
        {"spec": {"template": {"metadata": {"annotations": {MODEL_TAG_ANNOTATION: tag}}}}},
        MERGE_PATCH,
    )


class Run:
    """One retraining, step by step, each step logged with how long it took."""

    def __init__(self, settings: RetrainingSettings, kube: Kube, store: ModelStore, data_home: Path) -> None:
        self.settings, self.kube, self.store, self.data_home = settings, kube, store, data_home
        self.fields: dict = {}
        self.started = time.monotonic()

    def step(self, name: str, **fields) -> None:
        self.fields |= fields
        log.info(name, extra={"fields": {**fields, "elapsed_s": round(time.monotonic() - self.started, 1)}})

    def __call__(self) -> str:
        """The published tag; raises Refused, or an error."""
        path = f"/api/v1/namespaces/{self.kube.namespace}/configmaps/{self.settings.model_configmap}"
        configmap = self.kube.get(path)
        serving_tag = configmap["data"]["MODEL_TAG"]
        serving = self.store.fetch(serving_tag)
        pipeline = bentoml.sklearn.load_model(serving)
        self.step("serving_model", serving_tag=str(serving.tag))
        records = export_records(self.settings)
        feedback = labelled_feedback(records, [str(c) for c in pipeline.classes_])
        self.step("exported", feedback=feedback.as_fields())
        if not feedback.learn.texts:
            raise Refused(
                "no labelled feedback with text to learn from (the service logs texts with LOG_TEXT=prefix)"
            )
        metadata = serving.info.metadata
        config = TrainingConfig(
            categories=tuple(metadata["categories"]),
            strip=metadata["strip_headers_footers_quotes"],
            min_macro_f1=self.settings.min_macro_f1,
            model_name=serving.tag.name,
        )
        rules = GateRules(
            self.settings.gate_test_macro_f1_tolerance,
            self.settings.gate_feedback_accuracy_tolerance,
            self.settings.gate_min_holdout_labels,
        )
        candidate = train_and_gate(pipeline, config, feedback, rules, self.data_home)
        self.step("gated", gate=candidate.verdict.as_fields(), test_documents=len(candidate.test.texts))
        if not candidate.verdict.publish:
            raise Refused("; ".join(candidate.verdict.reasons))
        report = evaluate(candidate.pipeline, candidate.test)
        if report["macro_f1"] < config.min_macro_f1:
            raise QualityGateError(
                f"macro-F1 {report['macro_f1']:.4f} is below the floor {config.min_macro_f1}"
            )
        report["extra_samples"] = len(feedback.learn.texts)
        baseline = drift_baseline(candidate.pipeline, candidate.test)
        model = save(candidate.pipeline, config, candidate.train, report, baseline)
        if model.tag == serving.tag:
            raise Refused(f"the candidate is the serving model {serving.tag}: nothing new was learned")
        tag = str(self.store.publish(model.tag))
        self.step("published", candidate_tag=tag)
        roll_out(self.kube, self.settings, tag, configmap["metadata"]["resourceVersion"])
        self.step("rolled_out", candidate_tag=tag, deployment=self.settings.deployment)
        return tag


def finish(run: Run, outcome: str, reason: str = "") -> None:
    fields = {**run.fields, "outcome": outcome, "duration_s": round(time.monotonic() - run.started, 1)}
    if reason:
        fields["reason"] = reason
    level = logging.INFO if outcome == "published" else logging.ERROR
    log.log(level, "retraining_finished", extra={"fields": fields})
    try:  # what `kubectl describe pod` shows
        TERMINATION_LOG.write_text(f"{outcome}: {reason or fields.get('candidate_tag', '')}"[:4000])
    except OSError:
        pass  # not in a container


def main() -> int:
    log_json()
    data_home = Path(os.environ.get("SCIKIT_LEARN_DATA", Path.home() / "scikit_learn_data"))
    run = Run(RetrainingSettings(), Kube.in_cluster(), ModelStore(StoreSettings()), data_home)
    try:
        run()
    except (Refused, QualityGateError) as exc:
        finish(run, "refused", str(exc))
        return EXIT_REFUSED
    except (ApiError, StoreError, export.ExportError, DataUnavailableError) as exc:
        finish(run, "failed", str(exc))
        return 1
    except Exception as exc:  # anything else: logged as the outcome, with its traceback
        log.exception("retraining error")
        finish(run, "failed", f"{type(exc).__name__}: {exc}")
        return 1
    finish(run, "published")
    return 0


if __name__ == "__main__":
    sys.exit(main())
