"""The BentoML internals that compat.py uses still exist in the installed BentoML, and do what it says.

If one of these fails after a BentoML upgrade, the service cannot find its state: fix compat.py (or pin
BentoML back) before anything else. (tests/service/test_api.py checks the served instance keeps its
state in its own home.)
"""

from __future__ import annotations

import os
from importlib.metadata import requires, version
from pathlib import Path

from packaging.requirements import Requirement

from newsgroups_classifier import compat


def test_bentoml_is_in_the_range_pyproject_pins():
    (pinned,) = [r for r in map(Requirement, requires("newsgroups-classifier")) if r.name == "bentoml"]
    assert pinned.specifier.contains(version("bentoml")), (version("bentoml"), str(pinned))


def test_bentoml_home_is_the_one_bentoml_uses():
    expected = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")).resolve()
    assert compat.bentoml_home().resolve() == expected
    assert (expected / "models").is_dir()  # BentoML makes its model store there on first use
