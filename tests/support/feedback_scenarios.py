"""The traffic and feedback the retraining tests send: documents of the test split (new to the serving
model, as live documents are; the gate leaves out of its test-split comparison whatever the candidate
learned), disjoint between the scenarios.

- `skewed_true`: 300 documents, 70% of them hockey: the class drift alert's traffic; every prediction
  labelled with its true class. Measured: the candidate's test macro-F1 moves -0.002..+0.002 from the
  serving model's, within the gate's tolerance.
- `shuffled`: 500 documents, balanced; the labels shuffled among them (about three in four wrong).
  Measured: the candidate's test macro-F1 drops 0.018..0.023, well past the tolerance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from newsgroups_classifier.data import Split

SEED = 27
SKEWED_SIZE, SKEWED_CLASS, SKEWED_SHARE = 300, "rec.sport.hockey", 0.7
SHUFFLED_SIZE = 500


@dataclass(frozen=True)
class Labelled:
    text: str
    label: str


def usable(test: Split) -> list[int]:
    """Documents the service takes (not blank)."""
    return [i for i, text in enumerate(test.texts) if text.strip()]


def skewed_true(test: Split) -> list[Labelled]:
    rng = random.Random(SEED)
    indices = usable(test)
    main = [i for i in indices if test.labels[i] == SKEWED_CLASS]
    rest = [i for i in indices if test.labels[i] != SKEWED_CLASS]
    count = int(SKEWED_SIZE * SKEWED_SHARE)
    chosen = rng.sample(main, count) + rng.sample(rest, SKEWED_SIZE - count)
    rng.shuffle(chosen)
    return [Labelled(test.texts[i], test.labels[i]) for i in chosen]


def shuffled(test: Split) -> list[Labelled]:
    """Balanced documents none of which `skewed_true` uses, their labels shuffled among them."""
    rng = random.Random(SEED + 1)
    taken = {item.text for item in skewed_true(test)}
    by_class: dict[str, list[int]] = {}
    for i in usable(test):
        if test.texts[i] not in taken:
            by_class.setdefault(test.labels[i], []).append(i)
    per_class = SHUFFLED_SIZE // len(by_class)
    chosen = [i for label in sorted(by_class) for i in rng.sample(by_class[label], per_class)]
    labels = [test.labels[i] for i in chosen]
    rng.shuffle(labels)
    return [Labelled(test.texts[i], label) for i, label in zip(chosen, labels, strict=True)]
