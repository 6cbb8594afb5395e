"""Traces: the service's spans, exported through the tracer provider BentoML configures."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from opentelemetry import context, trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import compat
from .config import Settings

PROPAGATOR = TraceContextTextMapPropagator()


def export_resource_attributes(settings: Settings, model_version: str) -> None:
    """Put service version, environment, pod and namespace into OTEL_RESOURCE_ATTRIBUTES.

    BentoML builds its tracer provider lazily in each worker and merges this variable into the
    resource, so this must run at import of the service module, before the provider exists.
    """
    attributes = {
        "service.version": model_version,
        "deployment.environment.name": settings.deployment_environment,
        "k8s.pod.name": settings.pod_name,
        "k8s.namespace.name": settings.pod_namespace,
    }
    existing = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    ours = ",".join(f"{key}={value}" for key, value in attributes.items() if value)
    os.environ["OTEL_RESOURCE_ATTRIBUTES"] = ",".join(part for part in (ours, existing) if part)


def use_bentoml_tracer_provider() -> None:
    """Make the provider BentoML built for this worker the global one, so that spans from
    `trace.get_tracer()` go where BentoML's server spans go, sampled alike (parent-based)."""
    trace.set_tracer_provider(compat.tracer_provider())


def request_context(traceparent: str = "") -> context.Context:
    """The trace context of a request: from its `traceparent` when the text came through an adaptive
    batch (which mixes the texts of many requests), else the current one (BentoML's server span)."""
    if traceparent:
        return PROPAGATOR.extract({"traceparent": traceparent})
    return context.get_current()


def current_traceparent() -> str:
    """The current span context as a W3C traceparent (empty when there is none)."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


@dataclass
class StepTimer:
    """The steps of one model call, timed as they run, each from where the previous one ended; spans are
    made from them afterwards, since one call serves every request of an adaptive batch."""

    start_ns: int = field(default_factory=time.time_ns)
    end_ns: int = 0
    steps: list[tuple[str, int, int, BaseException | None]] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start, error = self.end_ns or self.start_ns, None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.end_ns = time.time_ns()
            self.steps.append((name, start, self.end_ns, error))

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def record_inference(
    tracer: trace.Tracer, parent: context.Context, timer: StepTimer, attributes: dict
) -> trace.Span | None:
    """The `inference` span of one request below `parent`, with a child span per step, timed by
    `timer`; a step that raised gives its span and `inference` the error status.

    None below an unsampled parent: sampling is parent-based, and BentoML's sampler would still
    record spans that are never exported.
    """
    if not trace.get_current_span(parent).get_span_context().trace_flags.sampled:
        return None
    inference = tracer.start_span("inference", parent, start_time=timer.start_ns, attributes=attributes)
    below = trace.set_span_in_context(inference, parent)
    for name, start, end, error in timer.steps:
        step = tracer.start_span(name, below, start_time=start)
        if error is not None:
            _set_error(step, error)
            _set_error(inference, error)
        step.end(end_time=end)
    inference.end(end_time=timer.end_ns)
    return inference


def _set_error(span: trace.Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def flush_spans() -> None:
    """Export the spans still waiting in the batch span processor (at shutdown: the worker then exits
    without running atexit hooks, so the last batch would die with it)."""
    trace.get_tracer_provider().force_flush()
