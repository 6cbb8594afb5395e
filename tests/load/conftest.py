"""Fixtures of the behaviour-under-load tests: the test split's documents, as the load tools use them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "load_testing"))

from workload import documents  # noqa: E402 (needs the path above)

from newsgroups_classifier.data import Split  # noqa: E402


@pytest.fixture(scope="session")
def docs(archive, data_home) -> Split:
    """Non-blank documents of the test split with their true labels."""
    return documents(archive=archive, data_home=data_home)
