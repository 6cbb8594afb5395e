"""The JSON log pipeline in this process: line format, trace ids, a queue that never waits, durable writes."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import REGISTRY

from newsgroups_classifier import logs
from support.processes import poll_until


def record(message: str = "hello", name: str = "newsgroups_classifier.test", **extra) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)
    made.__dict__.update(extra)
    return made


def formatted(made: logging.LogRecord) -> dict:
    logs.TraceIdFilter().filter(made)
    return json.loads(logs.JsonFormatter().format(made))


def test_a_line_is_one_json_object_with_time_level_and_logger():
    line = formatted(record('a "quoted" message\nüber'))
    assert line["message"] == 'a "quoted" message\nüber'
    assert line["level"] == "info" and line["logger"] == "newsgroups_classifier.test"
    assert line["ts"].endswith("+00:00") and len(line["ts"]) == len("2026-11-22T00:25:03.526+00:00")
    assert "trace_id" not in line  # logged outside any span


def test_an_event_carries_its_fields_and_the_current_trace_ids():
    with TracerProvider().get_tracer("test").start_as_current_span("request") as span:
        line = formatted(record("prediction", fields={"label": "rec.autos", "confidence": 0.5}))
        ids = span.get_span_context()
    assert line["event"] == "prediction" and "message" not in line
    assert line["label"] == "rec.autos" and line["confidence"] == 0.5
    assert line["trace_id"] == format(ids.trace_id, "032x") and line["span_id"] == format(ids.span_id, "016x")


def test_a_line_in_an_unsampled_trace_has_no_trace_id():
    # Only sampled traces are exported: a trace id in a line must lead to a trace.
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    with unsampled.start_as_current_span("request") as span:
        assert span.get_span_context().is_valid
        line = formatted(record("prediction", fields={"label": "rec.autos"}))
    assert "trace_id" not in line and "span_id" not in line


def test_an_exception_is_part_of_the_line():
    try:
        raise ValueError("broken")
    except ValueError:
        import sys

        made = record("failed", exc_info=sys.exc_info())
    line = formatted(made)
    assert line["message"] == "failed" and "ValueError: broken" in line["exception"]


def dropped() -> float:
    return REGISTRY.get_sample_value("newsgroups_log_lines_dropped_total") or 0.0


def test_a_full_queue_drops_and_counts_instead_of_waiting():
    handler = logs.DroppingQueueHandler(queue.Queue(2))
    before = dropped()
    for _ in range(5):
        handler.handle(record())  # returns at once: nothing reads the queue
    assert handler.queue.qsize() == 2 and dropped() == before + 3


def test_lines_longer_than_a_pipe_write_come_out_whole_from_many_threads(tmp_path, capfd):
    handler = logs.StdoutHandler(tmp_path / "stdout.lock")
    handler.setFormatter(logs.JsonFormatter())
    long = "x" * 100_000  # far over a pipe's atomic write size

    def log(thread: int) -> None:
        for i in range(20):
            handler.handle(record(f"{thread}-{i}-{long}"))

    threads = [threading.Thread(target=log, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [json.loads(line)["message"] for line in capfd.readouterr().out.splitlines()]
    assert len(lines) == 80 and all(line.endswith(long) for line in lines)
    for thread in range(4):  # each thread's lines in its order
        assert [line.split("-")[1] for line in lines if line.startswith(f"{thread}-")] == [
            str(i) for i in range(20)
        ]


def test_a_durable_handler_raises_when_the_write_fails(tmp_path, monkeypatch):
    def broken(fd, data):
        raise BrokenPipeError("stdout is gone")

    monkeypatch.setattr(os, "write", broken)
    with pytest.raises(BrokenPipeError):
        logs.StdoutHandler(tmp_path / "lock", durable=True).handle(record())
    logs.StdoutHandler(tmp_path / "lock").handle(record())  # the queue's handler reports, never raises


@contextmanager
def full_stdout() -> Iterator[None]:
    """fd 1 is a pipe nobody reads, already full (set inside the test: pytest re-points fd 1 between
    a fixture's setup and the test)."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 4096)
    except BlockingIOError:
        os.set_blocking(write_end, True)
    saved = os.dup(1)
    os.dup2(write_end, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        for fd in (saved, read_end, write_end):
            os.close(fd)


def test_a_durable_write_to_a_blocked_stdout_gives_up_in_time(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "DURABLE_WRITE_SECONDS", 0.3)
    started = time.monotonic()
    with full_stdout(), pytest.raises(TimeoutError, match="stdout took no data"):
        logs.StdoutHandler(tmp_path / "lock", durable=True).handle(record())
    assert time.monotonic() - started < 3


def test_a_durable_write_waits_for_another_writer_in_time(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "DURABLE_WRITE_SECONDS", 0.3)
    holder = os.open(tmp_path / "lock", os.O_CREAT | os.O_WRONLY)  # another worker, stuck mid-write
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(TimeoutError, match="another worker held stdout"):
            logs.StdoutHandler(tmp_path / "lock", durable=True).handle(record())
    finally:
        os.close(holder)


def test_rate_limit_lets_one_record_through_per_interval_and_counts_the_rest():
    now = [1000.0]
    limit = logs.RateLimitFilter(["opentelemetry"], interval_seconds=60, clock=lambda: now[0])
    exporter = [record("export failed", name="opentelemetry.exporter") for _ in range(4)]
    assert [limit.filter(r) for r in exporter] == [True, False, False, False]
    assert limit.filter(record("unrelated"))  # other loggers are not limited
    now[0] += 61
    later = record("export failed", name="opentelemetry.exporter")
    assert limit.filter(later) and later.msg == "export failed (3 similar messages suppressed in 60 s)"


@pytest.fixture
def logging_as_bentoml_leaves_it() -> Iterator[logging.Logger]:
    """Loggers with console handlers, as BentoML's worker configures them; restored afterwards."""
    loggers = [logging.getLogger(), logging.getLogger("bentoml"), logging.getLogger("newsgroups_classifier")]
    saved = [(logger, logger.handlers[:], logger.propagate, logger.level) for logger in loggers]
    for logger in loggers[:2]:
        logger.handlers = [logging.StreamHandler()]
    logging.getLogger("bentoml").propagate = False
    logging.getLogger("bentoml").setLevel(logging.INFO)
    durable = logging.getLogger("newsgroups_classifier.durable_test")
    yield durable
    for logger, handlers, propagate, level in saved:
        logger.handlers, logger.propagate, logger.level = handlers, propagate, level
    durable.handlers, durable.propagate = [], True


def test_installed_pipeline_writes_every_logger_once_as_json(logging_as_bentoml_leaves_it, tmp_path, capfd):
    durable = logging_as_bentoml_leaves_it
    listener = logs.install_json_logging(tmp_path / "lock", durable_loggers=[durable.name])
    try:
        durable.info("feedback", extra={"fields": {"correct": True}})
        assert json.loads(capfd.readouterr().out)["event"] == "feedback"  # written before info() returned
        logging.getLogger("bentoml.access").info("GET /predict")
        logging.getLogger("newsgroups_classifier.predictions").info("prediction", extra={"fields": {}})
        logging.getLogger("some.library").warning("careful")
        out = []
        poll_until(lambda: out.extend(capfd.readouterr().out.splitlines()) or len(out) >= 3, timeout=5)
    finally:
        listener.stop()
    lines = [json.loads(line) for line in out]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("bentoml.access", "info"),
        ("newsgroups_classifier.predictions", "info"),
        ("some.library", "warning"),
    ]
