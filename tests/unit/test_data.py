"""The data loader: offline from the archive through scikit-learn's own cache, and its errors."""

from __future__ import annotations

import pytest

from newsgroups_classifier.data import DEFAULT_CATEGORIES, DataUnavailableError, load_split


def test_offline_loading_gives_scikit_learns_split(archive, data_home):
    train = load_split("train", archive=archive, data_home=data_home)
    test = load_split("test", data_home=data_home)  # the cache built above serves without the archive
    assert len(train.texts) == 2389 and len(test.texts) == 1590  # the by-date split of the four rec.* groups
    assert set(train.labels) == set(DEFAULT_CATEGORIES)
    assert not any("Subject:" in text[:200] for text in train.texts[:50])  # headers are stripped by default


def test_no_archive_and_no_network_says_how_to_provide_it(tmp_path, monkeypatch):
    # No cache and a proxy on a closed port: scikit-learn's download fails at once, as offline.
    monkeypatch.delenv("NEWSGROUPS_ARCHIVE", raising=False)
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    with pytest.raises(DataUnavailableError, match="NEWSGROUPS_ARCHIVE"):
        load_split("train", data_home=tmp_path / "empty")
