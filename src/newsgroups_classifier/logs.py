"""Logs: every line a worker prints is one JSON object, stamped with the request's trace and span ids.

Records are formatted where they are logged (the request's trace context is there) and written to
stdout by a QueueListener thread, so a slow or blocked stdout delays lines, never a request; past
`QUEUE_SIZE` waiting lines new ones are dropped and counted. Records of a durable logger (feedback:
ground truth that a response acknowledges) are written before the call returns, or it raises.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path

import pythonjsonlogger.orjson
from opentelemetry import trace

from .config import SHUTDOWN_FLUSH_SECONDS
from .metrics import DROPPED_LINES

QUEUE_SIZE = 10_000
DURABLE_WRITE_SECONDS = 5.0
SERVICE_LOGGERS = "newsgroups_classifier"
EXPORTER_LOGGERS = ("opentelemetry",)  # they complain on every failed export while a collector is down
ERRORS_LOGGER = "newsgroups_classifier.errors"  # uncaught exceptions and warnings
STDERR_LOGGER = "newsgroups_classifier.stderr"  # lines written to stderr
# OpenTelemetry's propagators warn about the traceparent, tracestate and baggage headers they cannot
# parse, quoting them: what a client wrote. Their messages are kept, the quoted values are not.
CLIENT_QUOTING_LOGGERS = ("opentelemetry.trace", "opentelemetry.baggage")


class TraceIdFilter(logging.Filter):
    """Stamps each record with the current span's trace and span ids (32 and 16 hex digits) if the trace
    is sampled: only a sampled trace is exported, so a trace id in a line always leads to its trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid and span_context.trace_flags.sampled:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        return True


class WithoutClientValues(logging.Filter):
    """Replaces the arguments of `CLIENT_QUOTING_LOGGERS`' records: values a client sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(CLIENT_QUOTING_LOGGERS) and record.args:
            record.args = ("<not logged>",) * len(record.args) if isinstance(record.args, tuple) else None
        return True


class JsonFormatter(pythonjsonlogger.orjson.OrjsonFormatter):
    """`{"ts", "level", "logger", "trace_id", "span_id", ...}`, then `message`, or for an event logged
    with `extra={"fields": {...}}` its name as `event` and the fields; compact, non-ASCII kept as is.

    One form for every line, so that one Grafana derived-field regex, `"trace_id":"([0-9a-f]{32})"`,
    finds the trace in any of them. python-json-logger gathers and serialises (with orjson: compact, the
    fastest); `process_log_record` (its hook for reshaping) keeps exactly these keys, not the extras
    other libraries attach.
    """

    def __init__(self) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "message"],
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger", "exc_info": "exception"},
            json_default=str,
        )

    def process_log_record(self, log_data: dict) -> dict:
        line = {"ts": log_data["ts"], "level": log_data["level"].lower(), "logger": log_data["logger"]}
        if log_data.get("trace_id"):
            line["trace_id"], line["span_id"] = log_data["trace_id"], log_data["span_id"]
        fields = log_data.get("fields")
        if fields is None:
            line["message"] = log_data["message"]
        else:
            line["event"] = log_data["message"]
            line.update(fields)
        if "exception" in log_data:
            line["exception"] = log_data["exception"]
        return line

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class StdoutHandler(logging.Handler):
    """Writes each record as one line to stdout, whole.

    A write to a pipe (a container's stdout) longer than PIPE_BUF bytes can be split, and another
    worker's line could land inside it: each write takes an advisory lock that the workers of one
    instance share. A `durable` handler raises to its caller when the line is not written within
    `DURABLE_WRITE_SECONDS` (stdout blocked, or another worker blocked on it while holding the lock)
    instead of reporting the error, so the caller does not acknowledge what was not written.
    """

    def __init__(self, lock_path: Path, durable: bool = False):
        super().__init__()
        self._lock_path = lock_path
        self._lock_fd: int | None = None  # opened on first use, in the worker
        self._durable = durable

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record) + "\n")
        except Exception:
            if self._durable:
                raise
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        DROPPED_LINES.inc()  # not a traceback on stderr, which leads back here

    def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8", "replace"))
        deadline = time.monotonic() + DURABLE_WRITE_SECONDS if self._durable else None
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_CREAT | os.O_WRONLY, 0o600)
        self._acquire(deadline)
        try:
            while data:
                if deadline and not select.select([], [1], [], max(0.0, deadline - time.monotonic()))[1]:
                    raise TimeoutError(f"stdout took no data for {DURABLE_WRITE_SECONDS:.0f} s")
                data = data[os.write(1, data) :]
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _acquire(self, deadline: float | None) -> None:
        if deadline is None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            return
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another worker held stdout for {DURABLE_WRITE_SECONDS:.0f} s"
                    ) from None
                time.sleep(0.01)


class DroppingQueueHandler(QueueHandler):
    """A QueueHandler that never waits: when the queue is full the record is dropped and counted."""

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            DROPPED_LINES.inc()

    def handleError(self, record: logging.LogRecord) -> None:
        DROPPED_LINES.inc()  # a record that could not be formatted: not a traceback on stderr


class RateLimitFilter(logging.Filter):
    """Lets through one record per logger per interval from the loggers named by `prefixes`, and says
    how many were dropped since the last one."""

    def __init__(
        self,
        prefixes: Iterable[str],
        interval_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self._prefixes = tuple(prefixes)
        self._interval = interval_seconds
        self._clock = clock
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        now = self._clock()
        if now - self._last.get(record.name, -self._interval) < self._interval:
            self._dropped[record.name] = self._dropped.get(record.name, 0) + 1
            return False
        self._last[record.name] = now
        dropped = self._dropped.pop(record.name, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} similar messages suppressed in {self._interval:.0f} s)"
        return True


def install_json_logging(
    lock_path: Path, durable_loggers: Iterable[str], rate_limited: Iterable[str] = ()
) -> QueueListener:
    """Replace the console handlers of this process's loggers with the JSON pipeline; returns its
    listener (stop it at shutdown: it writes what is still queued).

    `durable_loggers` write synchronously; records of `rate_limited` (and the exporters' and stderr's)
    loggers are let through once a minute per logger.
    """
    formatter, trace_ids = JsonFormatter(), TraceIdFilter()
    stdout = StdoutHandler(lock_path)
    stdout.setFormatter(logging.Formatter("%(message)s"))  # the queue handler formatted the line
    queued = DroppingQueueHandler(queue.Queue(QUEUE_SIZE))
    queued.setFormatter(formatter)
    queued.addFilter(RateLimitFilter((*EXPORTER_LOGGERS, STDERR_LOGGER, *rate_limited)))
    queued.addFilter(WithoutClientValues())
    queued.addFilter(trace_ids)
    loggers = [logging.getLogger()] + [
        logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        if logger is logging.root or any(isinstance(h, logging.StreamHandler) for h in logger.handlers):
            logger.handlers = [queued]
            logger.propagate = logger is logging.root  # one line per record, not one per handler
    logging.getLogger(SERVICE_LOGGERS).setLevel(logging.INFO)
    durable = StdoutHandler(lock_path, durable=True)
    durable.setFormatter(formatter)
    durable.addFilter(trace_ids)
    for name in durable_loggers:
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [durable], False
    listener = QueueListener(queued.queue, stdout)
    listener.start()
    return listener


def log_json(stream=None, level: int = logging.INFO) -> None:
    """JSON lines for a one-process program (the model store's commands, the retraining Job and its
    trigger): every record of this process, one line each, written where it is logged."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.root.handlers = [handler]
    logging.root.setLevel(logging.WARNING)  # other libraries' chatter stays out
    logging.getLogger(SERVICE_LOGGERS).setLevel(level)


def take_over_process_output(
    lock_path: Path, durable_loggers: Iterable[str], rate_limited: Iterable[str] = ()
) -> QueueListener:
    """Everything this process prints goes through the JSON pipeline: its loggers, uncaught exceptions,
    warnings and whatever is written to stderr. Returns the pipeline's listener, which is stopped at
    exit (within SHUTDOWN_FLUSH_SECONDS) unless `stop_writing` stopped it first.

    Called when the service module is imported, which BentoML does after configuring logging and
    before logging anything, in `bentoml serve` and in every worker: so every line is JSON from the
    first byte, and no thread but the listener's ever waits on stdout.
    """
    listener = install_json_logging(lock_path, durable_loggers, rate_limited)
    log_uncaught_exceptions_and_warnings(logging.getLogger(ERRORS_LOGGER))
    capture_stderr(logging.getLogger(STDERR_LOGGER))
    atexit.register(run_within, SHUTDOWN_FLUSH_SECONDS, listener.stop)  # how `bentoml serve` ends
    return listener


def stop_writing(listener: QueueListener) -> None:
    """Write the queued lines, then stop the writer (a worker at shutdown: it skips atexit hooks)."""
    atexit.unregister(run_within)
    listener.stop()


def run_within(seconds: float, *calls: Callable[[], object]) -> None:
    """Run `calls` side by side for at most `seconds`: a blocked stdout or a hung collector must not
    hold a process past its grace period."""
    threads = [threading.Thread(target=call, daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def log_uncaught_exceptions_and_warnings(logger: logging.Logger) -> None:
    """Uncaught exceptions (main thread, other threads, `__del__`) and warnings become records, not text
    that Python would print on stderr."""

    def uncaught(kind, value, traceback) -> None:
        logger.critical("uncaught exception", exc_info=(kind, value, traceback))

    def in_thread(hook: threading.ExceptHookArgs) -> None:
        name = hook.thread.name if hook.thread else "?"
        exc_info = (hook.exc_type, hook.exc_value, hook.exc_traceback)
        logger.error("uncaught exception in thread %s", name, exc_info=exc_info)

    def unraisable(hook) -> None:
        exc_info = (hook.exc_type, hook.exc_value, hook.exc_traceback)
        logger.warning("%s: %r", hook.err_msg or "exception ignored", hook.object, exc_info=exc_info)

    sys.excepthook, threading.excepthook, sys.unraisablehook = uncaught, in_thread, unraisable
    logging.captureWarnings(True)


def capture_stderr(logger: logging.Logger) -> None:
    """Every line written to this process's stderr (fd 2: Python's or a C library's, such as gRPC's
    core) becomes a record of `logger`, read by a thread from a pipe of this process's own."""
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with open(read_end, "rb") as pipe:
            for line in pipe:
                logger.warning(line.decode("utf-8", "replace").rstrip("\n"))

    threading.Thread(target=pump, name="stderr-to-log", daemon=True).start()
