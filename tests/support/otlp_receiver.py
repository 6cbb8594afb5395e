"""A real OTLP receiver for tests: traces over gRPC and HTTP, logs over HTTP, decoded with the OTLP protobuf
definitions."""

from __future__ import annotations

import gzip
import json
import os
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from support.processes import free_port


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict
    resource: dict
    scope: str = ""
    start_ns: int = 0
    end_ns: int = 0


@dataclass(frozen=True)
class ReceivedLog:
    body: str
    trace_id: str
    span_id: str
    attributes: dict
    resource: dict
    severity_text: str = ""
    time_ns: int = 0


def _value(value: AnyValue):
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def _attributes(pairs) -> dict:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver:
    """Collects every span exported to it, over gRPC (`grpc_endpoint`) or HTTP (`http_endpoint`), and every
    log record over HTTP (`<http_prefix>/v1/logs`; Loki's OTLP endpoint is `/otlp/v1/logs`).

    With `dump_dir`, every export request is also written there as it came (`read_dumps` decodes them
    again): for a receiver that runs in another process, such as inside the cluster tier's network
    namespace. `read_api` answers GET requests on the same HTTP port, path -> (query parameters -> (status,
    JSON body)): the read API of the backend whose address the receiver takes (Loki's query_range)."""

    def __init__(
        self,
        http_prefix: str = "",
        host: str = "127.0.0.1",
        grpc_port: int | None = None,
        http_port: int | None = None,
        dump_dir: Path | None = None,
        read_api: dict[str, Callable[[dict[str, str]], tuple[int, dict]]] | None = None,
    ) -> None:
        self.spans: list[ReceivedSpan] = []
        self.logs: list[ReceivedLog] = []
        self.http_prefix = http_prefix
        self.requests = 0
        self._lock = threading.Lock()
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self.host = host
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.dump_dir = dump_dir
        self.read_api = read_api or {}
        self._dumped = 0

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """The base URL an OTLP/HTTP exporter is given (it adds /v1/traces)."""
        return f"http://{self.host}:{self.http_port}"

    def dump(self, kind: str, request) -> None:
        """Write one export request to dump_dir as <n>.<kind>, renamed into place (never half-written)."""
        if self.dump_dir is None:
            return
        with self._lock:
            self._dumped += 1
            name = f"{self._dumped:08d}.{kind}"
        temporary = self.dump_dir / f".{name}.tmp"
        temporary.write_bytes(request.SerializeToString())
        os.rename(temporary, self.dump_dir / name)

    @classmethod
    def read_dumps(cls, dump_dir: Path) -> OtlpReceiver:
        """A receiver (not started) holding every request dumped to `dump_dir`, in the order received."""
        receiver = cls()
        for path in sorted(dump_dir.glob("*.traces")) + sorted(dump_dir.glob("*.logs")):
            if path.suffix == ".traces":
                receiver.record(trace_service_pb2.ExportTraceServiceRequest.FromString(path.read_bytes()))
            else:
                receiver.record_logs(logs_service_pb2.ExportLogsServiceRequest.FromString(path.read_bytes()))
        return receiver

    def record(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            resource=resource,
                            scope=scope_spans.scope.name,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                        )
                    )
        self.dump("traces", request)
        with self._lock:
            self.requests += 1
            self.spans.extend(received)

    def record_logs(self, request: logs_service_pb2.ExportLogsServiceRequest) -> None:
        received = []
        for resource_logs in request.resource_logs:
            resource = _attributes(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                for log in scope_logs.log_records:
                    received.append(
                        ReceivedLog(
                            body=str(_value(log.body)),
                            trace_id=log.trace_id.hex(),
                            span_id=log.span_id.hex(),
                            attributes=_attributes(log.attributes),
                            resource=resource,
                            severity_text=log.severity_text,
                            time_ns=log.time_unix_nano or log.observed_time_unix_nano,
                        )
                    )
        self.dump("logs", request)
        with self._lock:
            self.requests += 1
            self.logs.extend(received)

    def log_records(self) -> list[ReceivedLog]:
        with self._lock:
            return list(self.logs)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def start(self) -> OtlpReceiver:
        receiver = self

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (generated name)
                receiver.record(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self._grpc)
        self._grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
        self._grpc.start()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":  # the collector's default
                    body = gzip.decompress(body)
                services = {
                    "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest, receiver.record),
                    f"{receiver.http_prefix}/v1/logs": (
                        logs_service_pb2.ExportLogsServiceRequest,
                        receiver.record_logs,
                    ),
                }
                if self.path not in services or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404 if self.path not in services else 415)
                    return
                kind, record = services[self.path]
                request = kind()
                request.ParseFromString(body)
                record(request)
                payload = b""  # an empty Export*ServiceResponse: everything accepted
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):  # noqa: N802 (http.server's name)
                url = urlsplit(self.path)
                if url.path not in receiver.read_api:
                    self.send_error(404)
                    return
                params = {key: values[-1] for key, values in parse_qs(url.query).items()}
                status, body = receiver.read_api[url.path](params)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self._http = ThreadingHTTPServer((self.host, self.http_port), Handler)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._grpc:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
