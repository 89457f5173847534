"""Traces across services (OpenTelemetry): a span per post in collect, per stream entry in dispatch, per batch on a node.

The spans are joined by W3C ``traceparent`` strings that travel with the work: collect's in the post's
stream entry (field ``tp``), each entry's dispatch span in the link batch's head (``tp``, one per entry
the batch carries: the first is the node span's parent, the others its links). So one message yields
one connected trace: ``collect.post`` -> ``dispatch.entry`` -> ``push.batch``.

Spans are exported with OTLP over HTTP only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (``configure``,
the standard ``OTEL_*`` variables apply). Otherwise ``enabled()`` is false, the SDK is never imported and
``span`` is a no-op that yields None: no span, no context, no field on the wire.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags

_enabled = False


def configure(service: str) -> None:
    """Export this process's spans with OTLP if ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; else leave tracing off."""
    global _enabled
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _enabled = True


def enabled() -> bool:
    return _enabled


def shutdown() -> None:
    """Send the spans still buffered (a service's last step on shutdown)."""
    provider = trace.get_tracer_provider()
    if _enabled and hasattr(provider, "shutdown"):
        provider.shutdown()


def traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def span_context(parent: str) -> SpanContext | None:
    """The span context a ``traceparent`` names, or None if it is not one."""
    parts = parent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags)) if trace_id and span_id else None


def span(name: str, parents: Sequence[str] = (), **attributes: Any) -> contextlib.AbstractContextManager[str | None]:
    """A span named ``name`` while the block runs, child of the first of ``parents`` (``traceparent`` strings) and
    linked to the others; it yields its own ``traceparent``, to carry on. While tracing is off: one shared no-op that
    yields None."""
    return _span(name, parents, attributes) if _enabled else _OFF


_OFF: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


@contextlib.contextmanager
def _span(name: str, parents: Sequence[str], attributes: dict[str, Any]) -> Iterator[str]:
    contexts = [c for c in map(span_context, parents) if c is not None]
    parent = trace.set_span_in_context(NonRecordingSpan(contexts[0])) if contexts else None
    links = [Link(c) for c in contexts[1:]]
    with trace.get_tracer("pushcluster").start_as_current_span(name, context=parent, links=links, attributes=attributes) as current:
        yield traceparent(current.get_span_context())
