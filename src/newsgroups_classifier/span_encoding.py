"""OTLP span encoding: the message OpenTelemetry's encoder builds, at a fraction of its CPU.

The stock encoder (`opentelemetry.exporter.otlp.proto.common`) builds a protobuf object for every
span, attribute and value, with a chain of isinstance tests per value: with every request traced, it
was 90% of the span exporter's time. This writes the protobuf wire format directly (a span is a
concatenation of its fields) and keeps the bytes of what repeats from span to span: resources,
scopes and attributes with string, boolean or integer values (`http.method=POST`). The result is
parsed into the same `ExportTraceServiceRequest` for the exporter (in C, a few microseconds). Values
the fast path does not know (mappings, bytes, out-of-range integers) go through the stock encoder,
so the message is the stock one in every case; `tests/service/test_span_encoding.py` compares them.
"""

from __future__ import annotations

import logging
import struct
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_key_value,
    _encode_resource,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

logger = logging.getLogger(__name__)

_SMALL = [bytes((n,)) for n in range(0x80)]
_KIND = {kind: _SMALL[kind.value + 1] for kind in SpanKind}  # OTLP's enum starts at UNSPECIFIED
_INT64 = range(-(2**63), 2**63)
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
_CACHED = frozenset((str, bool, int))  # not float: 0.0 == -0.0, and measured values rarely repeat
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # SpanFlags
_CACHE_LIMIT = 4096  # encodings kept per cache; cleared when full (ports and lengths vary)

_attribute_cache: dict[tuple[bytes, str, type, Any], bytes] = {}  # KeyValue fields, tag included
_resource_cache: dict[Resource, bytes] = {}
_scope_cache: dict[InstrumentationScope | None, bytes] = {}


def encode_spans(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The drop-in replacement of the stock `encode_spans`."""
    return ExportTraceServiceRequest.FromString(encode_request(spans))


def use_for_otlp_exporters() -> None:
    """Make the OTLP span exporters (gRPC and HTTP) encode with this module."""
    from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_exporter
    from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_exporter

    grpc_exporter.encode_spans = encode_spans
    http_exporter.encode_spans = encode_spans


def encode_request(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialised ExportTraceServiceRequest: spans grouped by resource, then by scope."""
    groups: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for span in spans:
        groups[span.resource][span.instrumentation_scope or None].append(_span(span))
    request = []
    for resource, scopes in groups.items():
        resource_spans = [_resource(resource)]
        for scope, encoded in scopes.items():
            scope_spans = [_scope(scope), *encoded]
            if scope is not None and scope.schema_url:
                scope_spans.append(_string(b"\x1a", scope.schema_url))
            resource_spans.append(_length_delimited(b"\x12", b"".join(scope_spans)))
        if resource.schema_url:
            resource_spans.append(_string(b"\x1a", resource.schema_url))
        request.append(_length_delimited(b"\x0a", b"".join(resource_spans)))
    return b"".join(request)


def _span(span: ReadableSpan) -> bytes:
    context, parent = span.context, span.parent
    parts = _ids(context)
    if context.trace_state:
        parts.append(_string(b"\x1a", ",".join(f"{k}={v}" for k, v in context.trace_state.items())))
    if parent is not None:
        parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    parts += (_string(b"\x2a", span.name), b"\x30", _KIND[span.kind])
    if span.start_time:
        parts += (b"\x39", _FIXED64(span.start_time))
    if span.end_time:
        parts += (b"\x41", _FIXED64(span.end_time))
    parts += _attributes(b"\x4a", span.attributes)
    parts += map(_event, span.events)
    parts += map(_link, span.links)
    parts += _count(b"\x50", span.dropped_attributes)
    parts += _count(b"\x60", span.dropped_events)
    parts += _count(b"\x70", span.dropped_links)
    status = span.status
    if status.status_code is StatusCode.UNSET and not status.description:
        parts.append(b"\x7a\x00")  # an empty Status: present, as the stock encoder always sets it
    else:
        code = b"\x18" + _SMALL[status.status_code.value] if status.status_code.value else b""
        parts.append(_length_delimited(b"\x7a", _string(b"\x12", status.description or "") + code))
    parts += (b"\x85\x01", _FIXED32(_flags(parent)))
    return _length_delimited(b"\x12", b"".join(parts))


def _event(event: Any) -> bytes:
    parts = [b"\x09" + _FIXED64(event.timestamp) if event.timestamp else b"", _string(b"\x12", event.name)]
    parts += _attributes(b"\x1a", event.attributes)
    parts += _count(b"\x20", event.dropped_attributes)
    return _length_delimited(b"\x5a", b"".join(parts))


def _link(link: Any) -> bytes:
    context = link.context
    parts = _ids(context)
    parts += _attributes(b"\x22", link.attributes)
    parts += _count(b"\x28", link.dropped_attributes)
    parts += (b"\x35", _FIXED32(_flags(context)))
    return _length_delimited(b"\x6a", b"".join(parts))


def _ids(context: SpanContext) -> list[bytes]:
    """Fields 1 and 2 of a span or a link: trace id and span id."""
    trace_id, span_id = context.trace_id.to_bytes(16, "big"), context.span_id.to_bytes(8, "big")
    return [b"\x0a\x10", trace_id, b"\x12\x08", span_id]


def _flags(parent: SpanContext | None) -> int:
    return _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> list[bytes]:
    """The KeyValue fields of `attributes`; one that cannot be encoded is logged and left out, as the
    stock encoder does."""
    if not attributes:
        return []
    fields = []
    for key, value in attributes.items():
        # exact types only: with subclasses and sequences, True == 1 and (True,) == (1,) would share
        cache_key = (tag, key, type(value), value) if type(value) in _CACHED else None
        field = _attribute_cache.get(cache_key) if cache_key else None
        if field is None:
            try:
                field = _length_delimited(tag, _key_value(key, value))
            except Exception:
                logger.exception("Failed to encode key %s", key)
                continue
            if cache_key:
                _remember(_attribute_cache, cache_key, field)
        fields.append(field)
    return fields


def _key_value(key: str, value: Any) -> bytes:
    """A serialised KeyValue: scalars here, anything else by the stock encoder."""
    if isinstance(value, bool):
        any_value = b"\x10\x01" if value else b"\x10\x00"
    elif isinstance(value, str):
        any_value = _string(b"\x0a", value, keep_empty=True)
    elif isinstance(value, int) and value in _INT64:
        any_value = b"\x18" + _varint(value % 2**64)  # negative int64: two's complement, 10 bytes
    elif isinstance(value, float):
        any_value = b"\x21" + _DOUBLE(value)
    else:
        return _encode_key_value(key, value).SerializeToString()
    return _string(b"\x0a", key) + _length_delimited(b"\x12", any_value)


def _resource(resource: Resource) -> bytes:
    encoded = _resource_cache.get(resource)
    if encoded is None:
        encoded = _length_delimited(b"\x0a", _encode_resource(resource).SerializeToString())
        _remember(_resource_cache, resource, encoded)
    return encoded


def _scope(scope: InstrumentationScope | None) -> bytes:
    encoded = _scope_cache.get(scope)
    if encoded is None:
        encoded = _length_delimited(b"\x0a", _encode_instrumentation_scope(scope).SerializeToString())
        _remember(_scope_cache, scope, encoded)
    return encoded


def _remember(cache: dict, key: Any, encoded: bytes) -> None:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = encoded


def _count(tag: bytes, count: int) -> tuple[bytes, ...]:
    """A varint field (a dropped count), left out when zero as proto3 does."""
    return (tag, _varint(count)) if count else ()


def _string(tag: bytes, text: str, keep_empty: bool = False) -> bytes:
    if not text and not keep_empty:
        return b""  # proto3 leaves empty strings out
    return _length_delimited(tag, text.encode())


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    size = len(payload)
    return tag + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
