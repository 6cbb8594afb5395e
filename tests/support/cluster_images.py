"""The images of tests/cluster/images.sh (`make cluster-images`): its build environment and archives."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support.paths import REPO

IMAGES = REPO / "tests" / "cluster" / "images.sh"


def images_env() -> dict[str, str]:
    """The environment `bentoml containerize --backend buildah` builds with here."""
    out = subprocess.run(["bash", IMAGES, "--env"], capture_output=True, text=True, check=True).stdout
    return {**os.environ, **dict(line.split("=", 1) for line in out.splitlines())}


def image_archive(image: str, path: Path, name: str | None = None) -> Path:
    """`image` from the builder's storage as a docker archive (what `ctr import` reads), named `name`."""
    command = ["bash", IMAGES, "--archive", image, f"{path}:{name or image}"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"no image {image} ({result.stderr.strip()}): run `make cluster-images`"
    return path
