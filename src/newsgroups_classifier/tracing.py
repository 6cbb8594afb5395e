"""Traces: the OpenTelemetry SDK configured by the standard OTEL_* variables, a server span for each API
request (made by the HTTP edge), and one `inference` span per request for the model call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .config import Settings

PROPAGATOR = TraceContextTextMapPropagator()
EXPORTERS = {"grpc": GrpcSpanExporter, "http/protobuf": HttpSpanExporter}
TRACE_HEADERS = (b"traceparent", b"tracestate")


def configure_tracing(settings: Settings, service_name: str, model_version: str) -> None:
    """The global tracer provider of this worker: sampler from OTEL_TRACES_SAMPLER(_ARG) (parent-based),
    exporter endpoint and timeout from OTEL_EXPORTER_OTLP_*, spans exported in the background."""
    attributes = {
        "service.name": service_name,
        "service.version": model_version,
        "deployment.environment.name": settings.deployment_environment,
        "k8s.pod.name": settings.pod_name,
        "k8s.namespace.name": settings.pod_namespace,
    }
    # Resource.create adds OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME takes precedence if set.
    provider = TracerProvider(resource=Resource.create({k: v for k, v in attributes.items() if v}))
    exporter = EXPORTERS[settings.otel_exporter_otlp_protocol]()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


@contextmanager
def server_span(tracer: trace.Tracer, method: str, route: str, headers: list) -> Iterator[trace.Span]:
    """The server span of an API request, continued from its `traceparent` and current while the request
    is answered; named after its route (a fixed set: the collector makes a metric series of each span
    name). The caller sets the status code."""
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k in TRACE_HEADERS}
    attributes = {"http.request.method": method, "http.route": route, "url.path": route}
    span = tracer.start_span(
        f"{method} {route}", PROPAGATOR.extract(carrier), kind=SpanKind.SERVER, attributes=attributes
    )
    with trace.use_span(span, end_on_exit=True):
        yield span


def set_status_code(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


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


def sampled(parent: context.Context) -> bool:
    """Whether the request of this context is traced (sampling is parent-based)."""
    return trace.get_current_span(parent).get_span_context().trace_flags.sampled


def record_inference(
    tracer: trace.Tracer, parent: context.Context, timer: StepTimer, attributes: dict
) -> trace.Span | None:
    """The `inference` span of one request below `parent`, timed by `timer`, with each step's duration
    as an attribute (`inference.<step>.duration_ms`: which step took how long, in one span); a step
    that raised gives the span the error status and its name as `inference.failed_step`.

    None below an unsampled parent: sampling is parent-based.
    """
    if not sampled(parent):
        return None
    steps = {f"inference.{name}.duration_ms": (end - start) / 1e6 for name, start, end, _ in timer.steps}
    inference = tracer.start_span(
        "inference", parent, start_time=timer.start_ns, attributes={**attributes, **steps}
    )
    for name, _, _, error in timer.steps:
        if error is not None:
            inference.set_attribute("inference.failed_step", name)
            inference.record_exception(error)
            inference.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    inference.end(end_time=timer.end_ns)
    return inference


def flush_spans() -> None:
    """Export the spans still waiting in the batch span processor (at shutdown: the worker then exits
    without running atexit hooks, so the last batch would die with it)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush()
