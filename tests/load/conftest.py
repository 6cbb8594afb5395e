"""Fixtures of the behaviour-under-load tests: the test split's documents, as the load tools use them."""

from __future__ import annotations

import pytest

from newsgroups_classifier.data import Split
from support.workload import documents


@pytest.fixture(scope="session")
def docs(archive, data_home) -> Split:
    """Non-blank documents of the test split with their true labels."""
    return documents(archive=archive, data_home=data_home)
