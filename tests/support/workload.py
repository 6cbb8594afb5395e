"""What the load tests and the load tools (load_testing/) share: the documents, the model store,
process-tree memory."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil

from newsgroups_classifier.config import Settings
from newsgroups_classifier.data import ARCHIVE_ENV, Split, load_split
from support.paths import ARCHIVE, REPO
from support.service_process import train_cli

REPORTS = REPO / "reports"
MIB = 1024 * 1024


def use_project_defaults() -> None:
    """The environment `make` exports, for runs started without make."""
    os.environ.setdefault("BENTOML_HOME", str(REPO / ".bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("SCIKIT_LEARN_DATA", str(REPO / ".data"))
    if ARCHIVE.is_file():
        os.environ.setdefault(ARCHIVE_ENV, str(ARCHIVE))


def documents(archive: str | os.PathLike | None = None, data_home: str | os.PathLike | None = None) -> Split:
    """The test split with its true labels, minus the blank documents the service rightly rejects."""
    split = load_split("test", archive=archive, data_home=data_home)
    pairs = [(text, label) for text, label in zip(split.texts, split.labels, strict=True) if text.strip()]
    return Split(texts=[text for text, _ in pairs], labels=[label for _, label in pairs])


def models_home() -> Path:
    return Path(os.environ["BENTOML_HOME"]).resolve()


def stored_model(tag: str | None = None) -> Path | None:
    """Folder of the model the service would serve (MODEL_TAG), or None when it is not stored."""
    import bentoml  # reads BENTOML_HOME: after use_project_defaults()

    try:
        return Path(bentoml.models.get(tag or Settings().model_tag).path)
    except bentoml.exceptions.NotFound:
        return None


def ensure_model(home: Path) -> Path:
    """The stored model the service will serve, trained first (as `make train` does) when missing."""
    path = stored_model()
    if path is None:
        print(f"no model in {home}: training one first", flush=True)
        print(train_cli(home).stdout, flush=True)
        path = stored_model()
    assert path is not None, f"training saved no model in {home}"
    return path


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@dataclass
class MemoryPeak:
    tree_mib: float = 0.0  # sum of the resident sets of every process in the tree
    largest_mib: float = 0.0  # the biggest single process (a worker, for BentoML)


class MemorySampler:
    """Samples the resident memory of a process tree in the background and keeps the peaks."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid = pid
        self.peak = MemoryPeak()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        sizes = []
        for process in process_tree(self.pid):
            try:
                sizes.append(process.memory_info().rss / MIB)
            except psutil.NoSuchProcess:
                continue  # a worker being replaced
        self.peak.tree_mib = max(self.peak.tree_mib, sum(sizes))
        self.peak.largest_mib = max(self.peak.largest_mib, max(sizes, default=0.0))

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self._interval):
                return
