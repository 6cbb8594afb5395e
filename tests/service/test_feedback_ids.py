"""Signed prediction ids, unit by unit: expiry is a matter of the clock, so it is tested here."""

from __future__ import annotations

import pytest

from newsgroups_classifier.feedback import FeedbackError, PredictionIdSigner, SeenIds


def test_expired_ids_are_rejected_with_410():
    signer = PredictionIdSigner(b"k" * 32, max_age_seconds=60)
    prediction_id = signer.issue("v1", "rec.autos", now=1_000)
    assert signer.verify(prediction_id, now=1_059).label == "rec.autos"
    with pytest.raises(FeedbackError) as error:
        signer.verify(prediction_id, now=1_061)
    assert (error.value.reason, error.value.status) == ("expired_id", 410)


def test_an_id_signed_with_another_key_is_unknown():
    prediction_id = PredictionIdSigner(b"a" * 32, 60).issue("v1", "rec.autos")
    with pytest.raises(FeedbackError, match="unknown"):
        PredictionIdSigner(b"b" * 32, 60).verify(prediction_id)


def test_duplicates_are_caught_across_connections(tmp_path):
    # Two workers of one instance share the SQLite file.
    signer = PredictionIdSigner(b"k" * 32, 3600)
    ref = signer.verify(signer.issue("v1", "rec.autos"))
    SeenIds(tmp_path / "seen.sqlite", 3600).claim(ref)
    with pytest.raises(FeedbackError, match="already recorded"):
        SeenIds(tmp_path / "seen.sqlite", 3600).claim(ref)
