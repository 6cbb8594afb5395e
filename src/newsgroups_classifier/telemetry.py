"""Traces, logs and exemplars: the glue between the service, BentoML and OpenTelemetry."""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from opentelemetry import trace
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.samples import Exemplar, Sample

from .config import Settings

EXPORTER_LOGGERS = ("opentelemetry",)
EXEMPLAR_FILE_PREFIX = "exemplars_"


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


def skip_asgi_send_receive_spans() -> None:
    """Make BentoML's ASGI middleware skip its `http receive` and `http send` spans.

    They are three of a request's ten spans, say nothing the server span does not, and cost about 6% of
    throughput. BentoML has no setting for the middleware's own `exclude_spans` option, so this sets its
    default; it must run before the worker builds its app (at import of the service module).
    """
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    original = OpenTelemetryMiddleware.__init__
    if getattr(original, "skips_send_receive", False):
        return

    @functools.wraps(original)
    def init(self, app, *args, exclude_spans=None, **kwargs):
        original(self, app, *args, exclude_spans=exclude_spans or ["receive", "send"], **kwargs)

    init.skips_send_receive = True
    OpenTelemetryMiddleware.__init__ = init


def tracer() -> trace.Tracer:
    """A tracer on BentoML's provider: BentoML never sets the global one, so spans from
    `trace.get_tracer()` would be silently dropped."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.tracer_provider.get().get_tracer("newsgroups_classifier")


def current_ids() -> tuple[str, str, bool]:
    """(trace id, span id, sampled) of the current span, as 32 and 16 lower-case hex digits."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "", "", False
    return f"{context.trace_id:032x}", f"{context.span_id:016x}", context.trace_flags.sampled


# --- logs ----------------------------------------------------------------------------------------


def json_line(record: logging.LogRecord) -> str:
    """Every log line of the service: one JSON object with `trace_id` when a request is in flight.

    One form everywhere, so a single Grafana derived-field regex finds the trace id in any line.
    """
    trace_id, span_id, _ = current_ids()
    if not trace_id:  # BentoML's own context (access log, outside our spans)
        from bentoml._internal.context import trace_context

        if trace_context.trace_id:
            trace_id, span_id = f"{trace_context.trace_id:032x}", f"{trace_context.span_id:016x}"
    event: dict = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
    }
    if trace_id:
        event["trace_id"] = trace_id
        event["span_id"] = span_id
    fields = getattr(record, "fields", None)
    if fields:
        event["event"] = record.getMessage()
        event.update(fields)
    else:
        event["message"] = record.getMessage()
    if record.exc_info:
        event["exception"] = logging.Formatter().formatException(record.exc_info)
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str)


class AtomicStdoutHandler(logging.Handler):
    """Writes each line to stdout under an advisory lock shared by the workers of this instance.

    A write of over PIPE_BUF bytes to a pipe (a container's stdout) can be split, and another
    process's write can land in between: so every line, short or long, takes the lock.
    """

    def __init__(self, lock_path: Path):
        super().__init__()
        self._lock_path = lock_path
        self._lock_fd: int | None = None  # opened in the worker, so each process has its own

    def emit(self, record: logging.LogRecord) -> None:
        try:
            view = memoryview((self.format(record) + "\n").encode("utf-8", "replace"))
            if self._lock_fd is None:
                self._lock_fd = os.open(self._lock_path, os.O_CREAT | os.O_WRONLY, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                while view:
                    view = view[os.write(1, view) :]
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
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


def install_json_logging(lock_path: Path) -> None:
    """Replace BentoML's console handlers in this worker with the JSON handler.

    Called from the service's __init__, which runs after the worker has configured logging.
    """
    handler = AtomicStdoutHandler(lock_path)
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


# --- exemplars -----------------------------------------------------------------------------------


class ExemplarStore:
    """The newest exemplar per histogram bucket of this worker, shared with the others through a file.

    prometheus_client's multiprocess mode drops exemplars, so they travel beside its files and are
    merged into the OpenMetrics exposition of /metrics.
    """

    def __init__(self, directory: Path, flush_interval: float = 0.5):
        self._path = directory / f"{EXEMPLAR_FILE_PREFIX}{os.getpid()}.json"
        self._exemplars: dict[str, list] = {}
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._interval = flush_interval
        threading.Thread(target=self._flush_forever, name="exemplar-flush", daemon=True).start()

    def record(self, metric: str, labels: dict[str, str], bucket: str, value: float, trace_id: str) -> None:
        key = json.dumps([metric, sorted(labels.items()), bucket])
        with self._lock:
            self._exemplars[key] = [trace_id, value, time.time()]
        self._dirty.set()

    def _flush_forever(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            with self._lock:
                data = json.dumps(self._exemplars)
            partial = self._path.with_suffix(".tmp")
            partial.write_text(data)
            os.replace(partial, self._path)
            time.sleep(self._interval)


def bucket_label(value: float, upper_bounds: Iterable[float]) -> str:
    """The `le` label of the bucket a value falls in, spelled as prometheus_client spells it."""
    from prometheus_client.utils import floatToGoString

    for bound in upper_bounds:
        if value <= bound:
            return floatToGoString(bound)
    return "+Inf"


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
