"""The fuzzing tier: generated requests against a real `bentoml serve` (tests/support/fuzzing.py says
what must hold after them, and how FUZZ_SECONDS and FUZZ_SEED size and seed a run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.service_process import Server, start_server


@pytest.fixture(scope="module")
def fuzzed(models_home, tmp_path_factory) -> Iterator[Server]:
    """A service for one module's fuzzing (each module its own), with the shipped configuration."""
    server = start_server(models_home, tmp_path_factory.mktemp("fuzzed"), sample_rate=0.0)
    yield server
    server.stop()
