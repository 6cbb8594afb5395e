"""Train, evaluate, gate and save the classifier with its drift baseline (`make train`)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import bentoml
import numpy as np
import sklearn
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from sklearn.pipeline import Pipeline

from .data import ARCHIVE_ENV, DEFAULT_CATEGORIES, DataUnavailableError, Split, fingerprint, load_split
from .drift_signals import build_baseline, signals
from .model import MODEL_NAME, build_pipeline, predict_proba, tokenize, vectorize

DEFAULT_MIN_MACRO_F1 = 0.85
REPORT_FILE = "evaluation.json"
BASELINE_FILE = "baseline.json"


class QualityGateError(RuntimeError):
    """The trained model is worse than the configured floor."""


@dataclass(frozen=True)
class TrainingConfig:
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    strip: bool = True  # remove headers, footers and quotes: the text the service will see
    min_macro_f1: float = DEFAULT_MIN_MACRO_F1
    archive: str | None = None
    data_home: str | None = None
    extra_data: str | None = None
    model_name: str = MODEL_NAME


def fit(split: Split) -> Pipeline:
    return build_pipeline().fit([tokenize(text) for text in split.texts], split.labels)


def evaluate(pipeline: Pipeline, split: Split) -> dict:
    classes = list(pipeline.classes_)
    predicted = pipeline.predict([tokenize(text) for text in split.texts])
    precision, recall, f1, support = precision_recall_fscore_support(
        split.labels, predicted, labels=classes, zero_division=0
    )
    return {
        "samples": len(split.labels),
        "accuracy": float(accuracy_score(split.labels, predicted)),
        "macro_f1": float(f1_score(split.labels, predicted, average="macro")),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": {
            "labels": classes,
            "matrix": confusion_matrix(split.labels, predicted, labels=classes).tolist(),
        },
    }


def drift_baseline(pipeline: Pipeline, split: Split) -> dict:
    """Baseline on held-out documents, skipping blank ones the service would reject."""
    token_lists = [tokenize(text) for text in split.texts if text.strip()]
    features, known = vectorize(pipeline, token_lists)  # as the service does
    probabilities = predict_proba(pipeline, features)
    classes = list(pipeline.classes_)
    observed = signals([len(tokens) for tokens in token_lists], known, probabilities)
    predicted = [classes[i] for i in np.argmax(probabilities, axis=1)]
    return build_baseline(predicted, classes, observed)


def model_version(config: TrainingConfig, data_fingerprint: str) -> str:
    """Deterministic: the same data and settings give the same version."""
    settings = json.dumps(
        {
            "data": data_fingerprint,
            "categories": config.categories,
            "strip": config.strip,
            "pipeline": build_pipeline().get_params(deep=True),
            "sklearn": sklearn.__version__,
        },
        sort_keys=True,
        default=lambda value: getattr(value, "__qualname__", type(value).__name__),  # functions, estimators
    )
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def load_extra_data(path: str, classes: tuple[str, ...]) -> Split:
    """Labelled records (JSON Lines with `text` and `true_label` or `label`), e.g. `make export-feedback`."""
    texts, labels = [], []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            text, label = record.get("text"), record.get("true_label", record.get("label"))
            if label is None or not text:
                continue  # unlabelled, or exported without text: nothing to learn from
            if label not in classes:
                raise ValueError(
                    f"{path}:{number}: label {label!r} is not one of the model's classes {classes}"
                )
            texts.append(text)
            labels.append(label)
    return Split(texts=texts, labels=labels)


def save(
    pipeline: Pipeline, config: TrainingConfig, train: Split, report: dict, baseline: dict
) -> bentoml.Model:
    data_fingerprint = fingerprint(train)
    tag = bentoml.Tag(config.model_name, model_version(config, data_fingerprint))
    try:
        bentoml.models.delete(tag)  # retraining on identical data replaces the identical model
    except bentoml.exceptions.NotFound:
        pass
    model = bentoml.sklearn.save_model(
        str(tag),
        pipeline,
        labels={"task": "text-classification", "dataset": "20newsgroups"},
        metadata={
            "labels": list(pipeline.classes_),
            "categories": list(config.categories),
            "strip_headers_footers_quotes": config.strip,
            "accuracy": report["accuracy"],
            "macro_f1": report["macro_f1"],
            "training_samples": len(train.texts),
            "training_data_sha256": data_fingerprint,
            "python": platform.python_version(),
            "scikit_learn": sklearn.__version__,
            "numpy": np.__version__,
            "bentoml": bentoml.__version__,
        },
    )
    model = bentoml.models.get(model.tag)  # save_model returns the staging copy; write beside the stored one
    Path(model.path_of(REPORT_FILE)).write_text(json.dumps(report, indent=2))
    Path(model.path_of(BASELINE_FILE)).write_text(json.dumps(baseline, indent=2))
    return model


def train(config: TrainingConfig) -> tuple[bentoml.Model, dict]:
    """Train and evaluate; save only a model that passes the quality gate."""
    train_split = load_split("train", config.categories, config.strip, config.archive, config.data_home)
    test_split = load_split("test", config.categories, config.strip, config.archive, config.data_home)
    report: dict = {}
    if config.extra_data:
        extra = load_extra_data(config.extra_data, tuple(sorted(set(train_split.labels))))
        report["before_extra_data"] = evaluate(fit(train_split), test_split)
        report["extra_samples"] = len(extra.texts)
        train_split = Split(train_split.texts + extra.texts, train_split.labels + extra.labels)
    pipeline = fit(train_split)
    report |= evaluate(pipeline, test_split)
    if report["macro_f1"] < config.min_macro_f1:
        raise QualityGateError(f"macro-F1 {report['macro_f1']:.4f} is below the floor {config.min_macro_f1}")
    model = save(pipeline, config, train_split, report, drift_baseline(pipeline, test_split))
    return model, report


def summary(model: bentoml.Model, report: dict) -> str:
    lines = [f"model {model.tag} saved in {model.path}"]
    if "before_extra_data" in report:
        before = report["before_extra_data"]
        lines.append(
            f"before extra data: accuracy {before['accuracy']:.4f}  macro-F1 {before['macro_f1']:.4f}  "
            f"(+{report['extra_samples']} labelled records)"
        )
    lines.append(
        f"test split: {report['samples']} documents  accuracy {report['accuracy']:.4f}  "
        f"macro-F1 {report['macro_f1']:.4f}"
    )
    lines.append(f"{'class':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for label, row in report["per_class"].items():
        lines.append(
            f"{label:<24}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}{row['support']:>10d}"
        )
    lines.append(f"report: {model.path_of(REPORT_FILE)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> TrainingConfig:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--categories",
        default=",".join(DEFAULT_CATEGORIES),
        help="comma-separated newsgroup names (default: the four rec.* groups)",
    )
    parser.add_argument(
        "--keep-headers",
        action="store_true",
        help="keep headers, footers and quotes (the service sees bare text, so the default strips them)",
    )
    parser.add_argument(
        "--min-macro-f1",
        type=float,
        default=float(os.environ.get("MIN_MACRO_F1", DEFAULT_MIN_MACRO_F1)),
        help="quality gate: fail when the test macro-F1 is below this (env MIN_MACRO_F1)",
    )
    parser.add_argument(
        "--data-archive", default=None, help=f"local 20news-bydate.tar.gz for offline use (env {ARCHIVE_ENV})"
    )
    parser.add_argument("--data-home", default=None, help="scikit-learn data cache folder")
    parser.add_argument(
        "--extra-data",
        default=os.environ.get("EXTRA_DATA") or None,
        help="JSON Lines of extra labelled records (text, label), e.g. an export of feedback",
    )
    parser.add_argument("--model-name", default=MODEL_NAME)
    args = parser.parse_args(argv)
    return TrainingConfig(
        categories=tuple(c.strip() for c in args.categories.split(",") if c.strip()),
        strip=not args.keep_headers,
        min_macro_f1=args.min_macro_f1,
        archive=args.data_archive,
        data_home=args.data_home,
        extra_data=args.extra_data,
        model_name=args.model_name,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        model, report = train(config)
    except (DataUnavailableError, QualityGateError, ValueError) as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, QualityGateError) else 1
    print(summary(model, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
