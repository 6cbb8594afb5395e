"""The BentoML internals that compat.py uses still exist in the installed BentoML, and do what it says.

If one of these fails after a BentoML upgrade, the service cannot export its spans or find its state:
fix compat.py (or pin BentoML back) before anything else.
"""

from __future__ import annotations

from importlib.metadata import requires, version

from opentelemetry.sdk.trace import TracerProvider
from packaging.requirements import Requirement

from newsgroups_classifier import compat


def test_bentoml_is_in_the_range_pyproject_pins():
    (pinned,) = [r for r in map(Requirement, requires("newsgroups-classifier")) if r.name == "bentoml"]
    assert pinned.specifier.contains(version("bentoml")), (version("bentoml"), str(pinned))


def test_tracer_provider_is_an_sdk_provider_and_always_the_same():
    provider = compat.tracer_provider()
    assert isinstance(provider, TracerProvider)
    assert compat.tracer_provider() is provider  # the one BentoML's ASGI middleware exports through
