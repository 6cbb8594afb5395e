"""The pipeline's pieces in this process: known-token counts beside the features, and the drift signals."""

from __future__ import annotations

import math
import random

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from newsgroups_classifier.drift_signals import signals
from newsgroups_classifier.model import build_pipeline, pre_tokenized, vectorize


def test_vectorize_gives_tfidf_features_and_the_known_tokens_per_document():
    rng = random.Random(7)
    words = [f"w{i}" for i in range(300)]  # w200 and up: never seen in training

    def document(vocabulary_size: int, most: int) -> list[str]:
        return ["common", *(rng.choice(words[:vocabulary_size]) for _ in range(rng.randint(0, most)))]

    training = [document(200, 60) for _ in range(80)]
    pipeline = build_pipeline()
    pipeline.fit(training, [i % 4 for i in range(len(training))])
    vocabulary = pipeline.named_steps["counts"].vocabulary_
    assert "common" not in vocabulary  # in every document: dropped by max_df, so unknown
    documents = [[], ["w250"] * 3, *(document(300, 90) for _ in range(40))]
    features, known = vectorize(pipeline, documents)
    # The two steps are what one TfidfVectorizer with the same settings computes.
    single = TfidfVectorizer(analyzer=pre_tokenized, sublinear_tf=True, max_df=0.5).fit(training)
    assert abs(features - single.transform(documents)).max() < 1e-12
    assert known.tolist() == [sum(token in vocabulary for token in doc) for doc in documents]
    assert known[0] == known[1] == 0 and max(known) > 20


def test_signals_of_many_predictions():
    observed = signals(
        [4, 4, 0, 10],
        [4, 1, 0, 0],
        np.array([[1.0, 0.0, 0.0, 0.0], [0.25] * 4, [0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]]),
    )
    assert observed.confidence.tolist() == [1.0, 0.25, 0.7, 0.4]
    assert observed.entropy[0] == 0.0 and math.isclose(observed.entropy[1], 1.0)
    by_hand = -sum(p * math.log(p) for p in (0.4, 0.3, 0.2, 0.1)) / math.log(4)
    assert math.isclose(observed.entropy[3], by_hand, rel_tol=1e-9)
    assert observed.oov_ratio.tolist() == [0.0, 0.75, 1.0, 1.0]  # no token at all: all out of vocabulary
    assert observed.empty.tolist() == [False, False, True, True]
    assert observed.token_count.tolist() == [4, 4, 0, 10]
