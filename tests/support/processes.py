"""Waiting for what a test started, and stopping it: polling, process stop, ports, log tails, built tools."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from support.paths import REPO

T = TypeVar("T")


class GiveUp(AssertionError):
    """Raised by a polled check when waiting longer cannot help (the process it waits for exited)."""


def poll_until(
    check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> T:
    """Call `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last_error = None  # the latest try failed without an error: report that, not an older one
        except GiveUp:
            raise
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or check}; last error: {last_error}")


def stop_process(process: subprocess.Popen, timeout: float = 20) -> int:
    """SIGTERM, then SIGKILL if it is still running after `timeout` seconds; its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def built_tool(script: str, name: str, how: str) -> Path:
    """The path of a tool a build script of ours makes (`script --print-path name`); fails if unbuilt."""
    path = Path(
        subprocess.run(
            ["bash", script, "--print-path", name], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    assert os.access(path, os.X_OK), f"{name} is not built ({path}): run `{how}`"
    return path
