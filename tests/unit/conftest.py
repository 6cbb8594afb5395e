"""The in-process tier (`make unit`): tests of the package's own code that start no process.

An audit hook refuses any process a test here would start (`subprocess`, `os.fork`, `os.exec*`,
`os.posix_spawn`, `os.system`), so that a test needing a server, the training CLI or a built tool
fails here instead of slowing the tier down: it belongs in another folder.
"""

from __future__ import annotations

import sys

import pytest

PROCESS_EVENTS = (
    "subprocess.Popen",
    "os.fork",
    "os.forkpty",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.system",
)
_testing = False


def _refuse_processes(event: str, args: tuple) -> None:
    if _testing and event in PROCESS_EVENTS:
        raise RuntimeError(f"a test in tests/unit started a process ({event} {args[:2]!r}): move it out")


sys.addaudithook(_refuse_processes)


@pytest.fixture(autouse=True)
def no_processes():
    global _testing
    _testing = True
    yield
    _testing = False
