"""Fixtures shared by every test: a model trained once on the real data, and running services."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.paths import ARCHIVE
from support.processes import built_tool
from support.service_process import Server, start_server, train_cli

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


@pytest.fixture(scope="session")
def archive() -> Path:
    assert ARCHIVE.is_file(), f"the 20 Newsgroups archive is missing at {ARCHIVE} (set NEWSGROUPS_SHARED)"
    return ARCHIVE


@pytest.fixture(scope="session")
def data_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sklearn-data")


@pytest.fixture(scope="session")
def train(archive, data_home):
    """`make train` on the shared archive into a given BentoML home, with extra options."""

    def run(home: Path, *args: str, check: bool = True):
        return train_cli(
            home, "--data-archive", str(archive), "--data-home", str(data_home), *args, check=check
        )

    return run


@pytest.fixture(scope="session")
def models_home(tmp_path_factory, train) -> Path:
    """A BentoML home holding a model trained on the default four categories."""
    home = tmp_path_factory.mktemp("bentoml-home")
    train(home)
    return home


@pytest.fixture(scope="session")
def service(models_home, tmp_path_factory) -> Iterator[Server]:
    """One service with two workers, tracing to nowhere (sample rate 0), for tests that only read it."""
    server = start_server(
        models_home, tmp_path_factory.mktemp("service"), sample_rate=0.0, env={"WORKERS": "2"}
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def helm() -> Path:
    """helm at the version tests/deploy/tools.sh pins (`make deploy-tools`)."""
    return built_tool("tests/deploy/tools.sh", "helm", "make deploy-tools")
