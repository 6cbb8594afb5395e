"""The only uses of BentoML's internals, each for something its public API does not offer (bentoml 1.4).

tests/service/test_compat.py fails when the pinned BentoML range no longer has them.
"""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider


def tracer_provider() -> TracerProvider:
    """The tracer provider BentoML builds from its `tracing` configuration (exporter, endpoint, sampler).

    BentoML exports its own server spans through it but never makes it the global provider, and has
    no public accessor: spans from `trace.get_tracer()` would go to the no-op provider.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.tracer_provider.get()


def bentoml_home() -> Path:
    """This instance's BentoML home (BENTOML_HOME, else ~/bentoml, created on first use), where the
    service keeps state its workers share. BentoML resolves it internally only."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get())
