"""Traces, logs and exemplars: the glue between the service, BentoML and OpenTelemetry."""

from __future__ import annotations

import bisect
import fcntl
import functools
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

from .config import Settings
from .metrics import DROPPED_LINES

EXPORTER_LOGGERS = ("opentelemetry",)
EXEMPLAR_FILE_PREFIX = "exemplars_"
T = TypeVar("T")
PROPAGATOR = TraceContextTextMapPropagator()
SCOPE = InstrumentationScope("newsgroups_classifier")  # of our spans
Step = tuple[str, int, int]  # name, start and end in ns since the epoch
SPAN_FLUSH_SECONDS = 5.0  # at shutdown; the Deployment's grace period is 30 s
_worker_stdout: BufferedStdout | None = None  # set by install_json_logging, once per worker


# --- resource attributes -------------------------------------------------------------------------


def export_resource_attributes(settings: Settings, model_version: str) -> None:
    """Put service version, environment, pod and namespace into OTEL_RESOURCE_ATTRIBUTES.

    BentoML builds its tracer provider lazily in each worker and merges this variable into the
    resource, so this must run at import of the service module, before the provider exists.
    """
    attributes = {
        "service.version": model_version,
        "deployment.environment.name": settings.environment,
        "k8s.pod.name": settings.pod_name,
        "k8s.namespace.name": settings.pod_namespace,
    }
    existing = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    ours = ",".join(f"{key}={value}" for key, value in attributes.items() if value)
    os.environ["OTEL_RESOURCE_ATTRIBUTES"] = ",".join(part for part in (ours, existing) if part)


def tracer() -> sdk_trace.Tracer:
    """A tracer on BentoML's provider: BentoML never sets the global one, so spans from
    `trace.get_tracer()` would be silently dropped."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.tracer_provider.get().get_tracer(SCOPE.name)


def flush_spans(tracer: sdk_trace.Tracer, timeout_seconds: float = SPAN_FLUSH_SECONDS) -> None:
    """Export the spans still waiting in the tracer's span processor, for at most `timeout_seconds`.

    For shutdown: the worker exits without running atexit hooks, so the last batch (up to 511 spans,
    or 5 s of traffic) would die with it. The SDK's `force_flush` ignores its timeout and a hung
    collector holds each export for the exporter's timeout, so it runs in a thread that is waited for
    no longer than the bound.
    """
    flushing = threading.Thread(target=tracer.span_processor.force_flush, name="span-flush", daemon=True)
    flushing.start()
    flushing.join(timeout_seconds)


def request_context(traceparent: str = "") -> trace.SpanContext:
    """The span context of the request: from its `traceparent` when the text came through an adaptive
    batch (which mixes requests), else the current one (the server span of the request)."""
    if traceparent:
        return trace.get_current_span(PROPAGATOR.extract({"traceparent": traceparent})).get_span_context()
    return trace.get_current_span().get_span_context()


@dataclass(frozen=True, slots=True)
class InferenceTrace:
    """The `inference` span of a sampled request and its steps, `(name, start_ns, end_ns)`, which have
    already run: exported later, off the request path, by `record_inference`. The `inference` span's
    context exists at once, since the request's prediction events carry its id."""

    parent: trace.SpanContext  # the request's server span
    inference: trace.SpanContext
    start_ns: int
    end_ns: int
    attributes: dict
    steps: list[Step]


def inference_trace(
    tracer: sdk_trace.Tracer,
    parent: trace.SpanContext,
    start_ns: int,
    end_ns: int,
    attributes: dict,
    steps: list[Step],
) -> InferenceTrace:
    """The spans to export below `parent`, a sampled server span (the caller's check: BentoML's
    sampler is parent-based, so a sampled parent is all the decision there is)."""
    return InferenceTrace(parent, _child(tracer, parent), start_ns, end_ns, attributes, steps)


def record_inference(tracer: sdk_trace.Tracer, spans: InferenceTrace) -> None:
    """Hand the finished `inference` span and its steps to the tracer's span processor.

    One model call serves a whole adaptive batch before any request's span could exist, so each
    request gets its spans afterwards. Built finished and handed to the provider's span processor, as
    `Span.end` does, they cost a fifth of `start_span` and `end` (no sampler, lock or context switch)
    for the same exported spans.
    """
    inference = spans.inference
    finished = [("inference", inference, spans.parent, spans.start_ns, spans.end_ns, spans.attributes)]
    finished += [
        (name, _child(tracer, inference), inference, start, end, None) for name, start, end in spans.steps
    ]
    for name, context, parent_context, start, end, span_attributes in finished:
        tracer.span_processor.on_end(
            sdk_trace.ReadableSpan(
                name,
                context,
                parent=parent_context,
                resource=tracer.resource,
                attributes=span_attributes,
                instrumentation_scope=SCOPE,
                start_time=start,
                end_time=end,
            )
        )


def _child(tracer: sdk_trace.Tracer, parent: trace.SpanContext) -> trace.SpanContext:
    span_id = tracer.id_generator.generate_span_id()
    return trace.SpanContext(parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state)


def current_ids() -> tuple[int, int]:
    """(trace id, span id) of the request in flight, 0 when none: the current span, or else BentoML's
    request context (the access log is written outside any span)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return context.trace_id, context.span_id
    from bentoml._internal.context import trace_context

    return trace_context.trace_id or 0, trace_context.span_id or 0


# --- logs ----------------------------------------------------------------------------------------


# One encoder for every line: json.dumps with options builds a new one per call (15 against 12 us).
LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)


def event_line(created: float, level: str, logger: str, ids: tuple[int, int], body: dict) -> str:
    """Every log line of the service: one JSON object with `trace_id` when a request is in flight.

    One form everywhere, so a single Grafana derived-field regex finds the trace id in any line.
    """
    event: dict = {"ts": iso_milliseconds(created), "level": level, "logger": logger}
    if ids[0]:
        event["trace_id"] = f"{ids[0]:032x}"
        event["span_id"] = f"{ids[1]:016x}"
    event.update(body)
    return LINE_ENCODER.encode(event) + "\n"


def line_head(created: float, level: str, logger: str, ids: tuple[int, int]) -> str:
    """`event_line`'s object up to its body, for the two lines written per request (the prediction
    event and the access log), which are templated by hand: the JSON encoder spends about 3 000
    instructions a field, a template a few hundred. `level` and `logger` must need no escaping.
    Tested against `event_line`."""
    head = f'{{"ts":"{iso_milliseconds(created)}","level":"{level}","logger":"{logger}"'
    if ids[0]:
        head += f',"trace_id":"{ids[0]:032x}","span_id":"{ids[1]:016x}"'
    return head


def json_float(value: float) -> str:
    """A float as the line encoder writes it (NaN and the infinities too)."""
    return float.__repr__(value) if value - value == 0 else LINE_ENCODER.encode(value)


def json_bool(value: bool) -> str:
    return "true" if value else "false"


def iso_milliseconds(created: float) -> str:
    """`created` (seconds since the epoch) as datetime's UTC isoformat(timespec="milliseconds") writes
    it, rounded to the microsecond as datetime does, but with each second's date and time made once."""
    micro = round(created * 1_000_000)
    return _utc_second(micro // 1_000_000) + _MILLISECONDS[micro % 1_000_000 // 1000]


_MILLISECONDS = tuple(f".{ms:03d}+00:00" for ms in range(1000))  # half the time of formatting them


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def json_line(record: logging.LogRecord) -> str:
    """A log record as an event line, with the ids of the request it was logged in."""
    ids = getattr(record, "trace_ids", None) or current_ids()
    fields = getattr(record, "fields", None)
    body = {"event": record.getMessage(), **fields} if fields else {"message": record.getMessage()}
    if record.exc_info:
        body["exception"] = logging.Formatter().formatException(record.exc_info)
    return event_line(record.created, record.levelname.lower(), record.name, ids, body)


class BufferedStdout:
    """Stdout for the workers of one instance: lines rendered and written in bulk, whole and unmixed.

    Rendering a line (JSON, and for prediction events their metrics) costs a request thread about
    three times what it costs in a loop over many, and each write took a lock and syscalls of its
    own: so `put` only queues an item with its render function, and a thread renders and writes
    what is pending every `interval` seconds, or as soon as `flush_at` items wait; functions given
    to `before_rendering` first see all the items about to be rendered, for work done best on many
    at once. Each write has a fixed cost (numpy steps, metric and span calls, a syscall), so the
    more items it takes the less each costs: at 0.5 s the stdout thread took 55-83 instead of
    171-186 us per request. Unless buffering is stopped (at shutdown, after which BentoML's worker
    exits without running atexit hooks): then `put` writes at once. At most `max_pending` items
    wait; beyond that (stdout blocked) `put` drops them and says so.

    A write of over PIPE_BUF bytes to a pipe (a container's stdout) can be split, and another
    process's write can land in between: so every write takes an advisory lock shared by the
    workers (and a thread lock, since an flock does not exclude the threads of one process).
    """

    def __init__(self, lock_path: Path, interval: float, max_pending: int = 5000, flush_at: int = 1000):
        self._lock_path = lock_path
        self._lock_fd: int | None = None  # opened in the worker, so each process has its own
        self._writing = threading.RLock()  # a render that logs a warning writes from within write
        self._pending: deque[tuple[Callable[[Any], str], Any]] = deque()
        self._preparers: list[Callable[[list], None]] = []
        self._every_write: list[Callable[[], None]] = []
        self._interval = interval
        self._max_pending = max_pending
        self._flush_at = flush_at
        self._wake = threading.Event()
        self._buffering = True
        threading.Thread(target=self._flush_forever, name="stdout-flush", daemon=True).start()

    def before_rendering(self, prepare: Callable[[list], None]) -> None:
        """Call `prepare` with the list of pending items before each bulk render (in the writer)."""
        self._preparers.append(prepare)

    def on_every_write(self, callback: Callable[[], None]) -> None:
        """Call `callback` at each write, with or without lines (in the writer)."""
        self._every_write.append(callback)

    def put(self, render: Callable[[T], str], item: T) -> bool:
        """Queue `item`, to be written as `render(item)`; False if it was dropped (and counted)."""
        if self._buffering and len(self._pending) >= self._max_pending:
            DROPPED_LINES.inc()
            return False
        self._pending.append((render, item))
        if not self._buffering:
            self.flush()
        elif len(self._pending) >= self._flush_at and not self._wake.is_set():
            self._wake.set()
        return True

    def write(self, text: str) -> None:
        """Write `text` now, after what is pending."""
        with self._writing:
            batch = []
            while self._pending:
                batch.append(self._pending.popleft())
            lines = []
            for prepare in self._preparers if batch else ():
                try:
                    prepare([item for _, item in batch])
                except Exception as error:  # the items still get their lines, or error lines
                    lines.append(_error_line("could not prepare log lines", error))
            for render, item in batch:
                try:
                    lines.append(render(item))
                except Exception as error:  # one bad item must not cost the others their lines
                    lines.append(_error_line("could not render a log line", error))
            for callback in self._every_write:
                try:
                    callback()
                except Exception as error:
                    lines.append(_error_line("could not write deferred telemetry", error))
            self._write_locked("".join(lines) + text)

    def flush(self) -> None:
        self.write("")

    def stop_buffering(self) -> None:
        self._buffering = False
        self.flush()

    def _write_locked(self, text: str) -> None:
        view = memoryview(text.encode("utf-8", "replace"))
        if not view:
            return
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_CREAT | os.O_WRONLY, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            while view:
                view = view[os.write(1, view) :]
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _flush_forever(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self.flush()
            except OSError:  # stdout gone: nothing to report it on, and the next flush may work
                pass


def _error_line(what: str, error: Exception) -> str:
    return event_line(time.time(), "error", __name__, (0, 0), {"message": f"{what}: {error!r}"})


class StdoutHandler(logging.Handler):
    """Logs to a BufferedStdout; warnings and errors are written at once (with what is pending),
    so that a crash's last words are not left in the buffer."""

    def __init__(self, stdout: BufferedStdout):
        super().__init__()
        self.stdout = stdout

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.trace_ids = current_ids()  # rendered later, outside the request's context
            if record.levelno >= logging.WARNING:
                self.stdout.write(self.format(record))
            else:
                self.stdout.put(self.format, record)
        except Exception:
            self.handleError(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json_line(record)


class RateLimitFilter(logging.Filter):
    """Lets through one exporter complaint per logger per interval, and says how many were dropped."""

    def __init__(self, interval_seconds: float = 60.0, prefixes: Iterable[str] = EXPORTER_LOGGERS):
        super().__init__()
        self._interval = interval_seconds
        self._prefixes = tuple(prefixes)
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        now = time.monotonic()
        if now - self._last.get(record.name, -self._interval) < self._interval:
            self._dropped[record.name] = self._dropped.get(record.name, 0) + 1
            return False
        self._last[record.name] = now
        dropped = self._dropped.pop(record.name, 0)
        if dropped:
            record.msg = (
                f"{record.msg} ({dropped} similar messages suppressed in the last {self._interval:.0f} s)"
            )
        return True


def worker_stdout() -> BufferedStdout | None:
    """This worker's buffered stdout, once `install_json_logging` has made it."""
    return _worker_stdout


def install_json_logging(lock_path: Path, flush_seconds: float, flush_lines: int) -> BufferedStdout:
    """Replace BentoML's console handlers in this worker with the JSON handler, whose stdout writes
    every `flush_seconds` or as soon as `flush_lines` wait; returns that stdout.

    Called from the service's __init__, which runs after the worker has configured logging.
    """
    # Lines never show the caller's file, thread or process: do not collect them for every record
    # (the logging HOWTO's "Optimization" section; finding the caller walks the stack).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    stdout = BufferedStdout(lock_path, flush_seconds, flush_at=flush_lines)
    handler = StdoutHandler(stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RateLimitFilter())
    loggers = [logging.getLogger()] + [
        logger for logger in logging.root.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        if any(isinstance(h, logging.StreamHandler) for h in logger.handlers):
            logger.handlers = [handler]
            logger.propagate = logger is logging.root  # one line per record, not one per handler
    # Exporter complaints reach the root handler; the service's own loggers log at INFO.
    logging.getLogger("newsgroups_classifier").setLevel(logging.INFO)
    global _worker_stdout
    _worker_stdout = stdout
    return stdout


# --- exemplars -----------------------------------------------------------------------------------


class ExemplarStore:
    """The newest exemplar per histogram bucket of this worker, shared with the others through a file.

    prometheus_client's multiprocess mode drops exemplars, so they travel beside its files and are
    merged into the OpenMetrics exposition of /metrics.
    """

    def __init__(self, directory: Path, flush_interval: float):
        self._path = directory / f"{EXEMPLAR_FILE_PREFIX}{os.getpid()}.json"
        self._exemplars: dict[tuple, tuple[str, float, float]] = {}
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._interval = flush_interval
        threading.Thread(target=self._flush_forever, name="exemplar-flush", daemon=True).start()

    def record(self, metric: str, labels: dict[str, str], bucket: str, value: float, trace_id: str) -> None:
        """Keep `trace_id` as the exemplar of `metric`'s bucket `bucket` for `labels`. On the request
        path: the file is written by a thread."""
        key = (metric, tuple(sorted(labels.items())), bucket)
        with self._lock:
            self._exemplars[key] = (trace_id, value, time.time())
        if not self._dirty.is_set():
            self._dirty.set()

    def _flush_forever(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            with self._lock:
                entries = list(self._exemplars.items())
            data = json.dumps(
                {json.dumps([m, labels, bucket]): entry for (m, labels, bucket), entry in entries}
            )
            partial = self._path.with_suffix(".tmp")
            partial.write_text(data)
            os.replace(partial, self._path)
            time.sleep(self._interval)


def bucket_label(value: float, upper_bounds: tuple[float, ...]) -> str:
    """The `le` label of the bucket a value falls in (the first bound >= it), spelled as
    prometheus_client spells it."""
    return _bucket_labels(upper_bounds)[bisect.bisect_left(upper_bounds, value)]


@functools.lru_cache(maxsize=8)
def _bucket_labels(upper_bounds: tuple[float, ...]) -> list[str]:
    return [floatToGoString(bound) for bound in upper_bounds] + ["+Inf"]


def read_exemplars(directory: Path) -> dict[tuple, Exemplar]:
    newest: dict[tuple, list] = {}
    for path in directory.glob(f"{EXEMPLAR_FILE_PREFIX}*.json"):
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now: the next scrape reads it
        for key, entry in entries.items():
            metric, labels, bucket = json.loads(key)
            index = (metric, tuple(tuple(pair) for pair in labels), bucket)
            if index not in newest or newest[index][2] < entry[2]:
                newest[index] = entry
    return {index: Exemplar({"trace_id": e[0]}, e[1], e[2]) for index, e in newest.items()}


def openmetrics_exposition(directory: Path) -> bytes:
    """All metrics of all workers (BentoML's and ours), with exemplars, in the OpenMetrics format."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    exemplars = read_exemplars(directory)

    class WithExemplars:
        def collect(self):
            for family in registry.collect():
                samples = []
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                        exemplar = exemplars.get((family.name, labels, sample.labels.get("le")))
                        if exemplar:
                            sample = Sample(
                                sample.name, sample.labels, sample.value, sample.timestamp, exemplar
                            )
                    samples.append(sample)
                # OpenMetrics wants each histogram's buckets in order, then its count and sum.
                family.samples = (
                    sorted(samples, key=_histogram_order) if family.type == "histogram" else samples
                )
                yield family

    return generate_openmetrics(WithExemplars())


def _histogram_order(sample: Sample) -> tuple:
    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
    kind = 0 if sample.name.endswith("_bucket") else 1 if sample.name.endswith("_count") else 2
    return labels, kind, float(sample.labels.get("le", 0))
