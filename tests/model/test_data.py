"""The data loader: offline from the archive through scikit-learn's own cache, and its errors."""

from __future__ import annotations

import os

import pytest

from helpers import train_cli
from newsgroups_classifier.data import ALL_CATEGORIES, DEFAULT_CATEGORIES, DataUnavailableError, load_split


def test_offline_loading_gives_scikit_learns_split(archive, data_home):
    train = load_split("train", archive=archive, data_home=data_home)
    test = load_split("test", data_home=data_home)  # the cache built above serves without the archive
    assert len(train.texts) == 2389 and len(test.texts) == 1590  # the by-date split of the four rec.* groups
    assert set(train.labels) == set(DEFAULT_CATEGORIES)
    assert not any("Subject:" in text[:200] for text in train.texts[:50])  # headers are stripped by default


def test_unknown_category_is_an_error_listing_valid_names(tmp_path):
    result = train_cli(tmp_path, "--categories", "rec.autos,rec.skiing", check=False)
    assert result.returncode == 1
    assert "unknown categories: rec.skiing" in result.stderr
    assert all(name in result.stderr for name in ALL_CATEGORIES)


def test_missing_archive_says_how_to_provide_it(tmp_path):
    result = train_cli(tmp_path, "--data-archive", str(tmp_path / "nope.tar.gz"), check=False)
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "NEWSGROUPS_ARCHIVE" in result.stderr


def test_no_archive_and_no_network_says_how_to_provide_it(tmp_path, monkeypatch):
    # No cache and a proxy on a closed port: scikit-learn's download fails at once, as offline.
    monkeypatch.delenv("NEWSGROUPS_ARCHIVE", raising=False)
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    with pytest.raises(DataUnavailableError, match="NEWSGROUPS_ARCHIVE"):
        load_split("train", data_home=tmp_path / "empty")
    assert "NEWSGROUPS_ARCHIVE" not in os.environ
