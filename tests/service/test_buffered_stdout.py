"""BufferedStdout, in this process: lines whole and in order, nothing lost to a bad item, a bound."""

from __future__ import annotations

import json
import threading
import time

import pytest
from prometheus_client import REGISTRY

from newsgroups_classifier.config import Settings
from newsgroups_classifier.telemetry import BufferedStdout


def lines(capfd) -> list[str]:
    return capfd.readouterr().out.splitlines()


def test_lines_from_many_threads_come_out_whole_and_in_each_threads_order(tmp_path, capfd):
    stdout = BufferedStdout(tmp_path / "lock", interval=0.01)
    long = "x" * 100_000  # far over a pipe's atomic write size

    def emit(thread: int) -> None:
        for i in range(200):
            stdout.put(lambda item: json.dumps(item) + "\n", {"thread": thread, "i": i, "pad": long})

    threads = [threading.Thread(target=emit, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stdout.flush()
    events = [json.loads(line) for line in lines(capfd)]
    assert len(events) == 800
    for thread in range(4):
        assert [e["i"] for e in events if e["thread"] == thread] == list(range(200))


def test_a_failing_render_costs_only_its_own_line(tmp_path, capfd):
    stdout = BufferedStdout(tmp_path / "lock", interval=3600)  # flushed by hand only
    stdout.put(lambda item: f"{item}\n", "before")
    stdout.put(lambda item: 1 / 0, "bad")
    stdout.put(lambda item: f"{item}\n", "after")
    stdout.write("now\n")  # written after what is pending
    output = lines(capfd)
    assert output[0] == "before" and output[2:] == ["after", "now"]
    error = json.loads(output[1])
    assert error["level"] == "error" and "ZeroDivisionError" in error["message"]


def test_a_full_buffer_drops_and_says_so_and_stop_buffering_writes_at_once(tmp_path, capfd):
    stdout = BufferedStdout(tmp_path / "lock", interval=3600, max_pending=2)
    dropped = REGISTRY.get_sample_value("newsgroups_log_lines_dropped_total")
    assert stdout.put(str.upper, "a\n") and stdout.put(str.upper, "b\n")
    assert not stdout.put(str.upper, "c\n")  # stdout blocked for long: dropped, not held
    assert REGISTRY.get_sample_value("newsgroups_log_lines_dropped_total") == dropped + 1
    assert lines(capfd) == []
    stdout.stop_buffering()
    assert lines(capfd) == ["A", "B"]
    assert stdout.put(str.upper, "d\n")
    assert lines(capfd) == ["D"]


def test_preparers_see_all_pending_items_at_once_before_they_are_rendered(tmp_path, capfd):
    stdout = BufferedStdout(tmp_path / "lock", interval=3600)
    seen: list[list] = []
    prepared: dict = {}

    def prepare(items: list) -> None:
        seen.append(items)
        prepared.update({item: item.upper() for item in items})

    stdout.before_rendering(prepare)
    for item in ("a", "b", "c"):
        stdout.put(lambda item: prepared[item] + "\n", item)
    stdout.flush()
    assert seen == [["a", "b", "c"]] and lines(capfd) == ["A", "B", "C"]
    stdout.flush()  # nothing pending: nothing to prepare
    assert len(seen) == 1
    stdout.stop_buffering()
    stdout.put(lambda item: prepared[item] + "\n", "d")  # written at once, prepared all the same
    assert seen[-1] == ["d"] and lines(capfd) == ["D"]


def test_a_failing_preparer_costs_an_error_line_not_the_items(tmp_path, capfd):
    stdout = BufferedStdout(tmp_path / "lock", interval=3600)
    stdout.before_rendering(lambda items: 1 / 0)
    stdout.put(lambda item: f"{item}\n", "kept")
    stdout.flush()
    error, kept = lines(capfd)
    assert "ZeroDivisionError" in json.loads(error)["message"] and kept == "kept"


def test_enough_pending_items_are_written_before_the_interval(tmp_path, capfd):
    stdout = BufferedStdout(tmp_path / "lock", interval=3600, flush_at=3)
    for item in ("a", "b"):
        stdout.put(lambda item: f"{item}\n", item)
    time.sleep(0.3)
    assert lines(capfd) == []  # fewer than flush_at: they wait for the interval
    stdout.put(lambda item: f"{item}\n", "c")
    deadline = time.monotonic() + 5
    written: list[str] = []
    while len(written) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        written += lines(capfd)
    assert written == ["a", "b", "c"]


def test_every_write_runs_the_callbacks_lines_or_not(tmp_path, capfd):
    stdout = BufferedStdout(tmp_path / "lock", interval=3600)
    calls = []
    stdout.on_every_write(lambda: calls.append(len(calls)))
    stdout.on_every_write(lambda: 1 / 0)  # a failing one costs no line, and is reported
    stdout.flush()
    stdout.put(lambda item: f"{item}\n", "a")
    stdout.flush()
    assert calls == [0, 1]
    written = lines(capfd)
    assert written[1] == "a"  # the second write: its line, then what went wrong
    errors = [json.loads(line)["message"] for line in (written[0], written[2])]
    assert errors == ["could not write deferred telemetry: ZeroDivisionError('division by zero')"] * 2


def test_the_flush_settings_are_positive_numbers(monkeypatch):
    monkeypatch.setenv("TELEMETRY_FLUSH_SECONDS", "2.5")
    assert Settings().telemetry_flush_seconds == 2.5
    monkeypatch.delenv("TELEMETRY_FLUSH_SECONDS")
    assert Settings().telemetry_flush_seconds == 0.5
    monkeypatch.setenv("TELEMETRY_FLUSH_LINES", "150")
    assert Settings().telemetry_flush_lines == 150
    with pytest.raises(ValueError, match="TELEMETRY_FLUSH_LINES must be positive"):
        monkeypatch.setenv("TELEMETRY_FLUSH_LINES", "0")
        Settings()
    monkeypatch.delenv("TELEMETRY_FLUSH_LINES")
    for bad, message in (("soon", "TELEMETRY_FLUSH_SECONDS must be a number, got 'soon'"), ("0", "positive")):
        monkeypatch.setenv("TELEMETRY_FLUSH_SECONDS", bad)
        with pytest.raises(ValueError, match=message):
            Settings()
