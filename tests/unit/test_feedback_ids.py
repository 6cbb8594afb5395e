"""Signed prediction ids, unit by unit: expiry is a matter of the clock, so it is tested here."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

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


@pytest.mark.parametrize("prediction_id", ["a.b\u00e9", "\u00e9.b", "caf\u00e9"])
def test_an_id_with_characters_the_service_never_issues_is_malformed(prediction_id):
    # Found by fuzzing: hmac.compare_digest refuses non-ASCII text with a TypeError (a 500).
    with pytest.raises(FeedbackError) as error:
        PredictionIdSigner(b"k" * 32, 60).verify(prediction_id)
    assert (error.value.reason, error.value.status) == ("malformed_id", 400)


def claimed(seen: SeenIds, ref) -> bool:
    try:
        with seen.claim(ref):
            return True
    except FeedbackError as error:
        assert error.reason == "duplicate_id" and error.status == 409
        return False


def test_duplicates_are_caught_across_connections(tmp_path):
    # Two workers of one instance share the SQLite file.
    signer = PredictionIdSigner(b"k" * 32, 3600)
    ref = signer.verify(signer.issue("v1", "rec.autos"))
    assert claimed(SeenIds(tmp_path / "seen.sqlite", 3600), ref)
    assert not claimed(SeenIds(tmp_path / "seen.sqlite", 3600), ref)


def test_a_claim_whose_block_fails_is_not_kept(tmp_path):
    # The block writes the feedback's log event: if that fails, the id must stay claimable.
    signer, seen = PredictionIdSigner(b"k" * 32, 3600), SeenIds(tmp_path / "seen.sqlite", 3600)
    ref = signer.verify(signer.issue("v1", "rec.autos"))
    with pytest.raises(BrokenPipeError), seen.claim(ref):
        raise BrokenPipeError("stdout is gone")
    assert claimed(seen, ref) and not claimed(seen, ref)


def test_one_connection_serves_concurrent_request_threads(tmp_path):
    # Request threads share a worker's connection: each id is recorded exactly once, no error.
    signer, seen = PredictionIdSigner(b"k" * 32, 3600), SeenIds(tmp_path / "seen.sqlite", 3600)
    refs = [signer.verify(signer.issue("v1", "rec.autos")) for _ in range(50)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda ref: claimed(seen, ref), refs * 4))
    assert results.count(True) == 50 and results.count(False) == 150
