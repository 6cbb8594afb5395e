"""The only uses of BentoML's internals, each for something its public API does not offer (bentoml 1.4).

tests/unit/test_compat.py fails when the pinned BentoML range no longer has them.
"""

from __future__ import annotations

from pathlib import Path


def bentoml_home() -> Path:
    """This instance's BentoML home (BENTOML_HOME, else ~/bentoml, created on first use), where the
    service keeps state its workers share. BentoML resolves it internally only."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get())
