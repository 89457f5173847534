"""With an OTLP endpoint set, one message yields one connected trace: collect's post, dispatch's entry, the node's batch."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.client import receive_ids
from tests.conftest import RunningStack
from tests.waits import until
from tools.cluster import ROOT, free_port


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


class Receiver:
    """A minimal OTLP/HTTP trace receiver: keeps every span posted to ``/v1/traces`` (protobuf)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    async def traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource in export.resource_spans:
            service = next(a.value.string_value for a in resource.resource.attributes if a.key == "service.name")
            self.spans += [Span(service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex())
                           for scope in resource.scope_spans for s in scope.spans]
        return web.Response(body=b"", content_type="application/x-protobuf")


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    found, port = Receiver(), free_port()
    app = web.Application()
    app.router.add_post("/v1/traces", found.traces)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield found, port
    await runner.cleanup()


async def test_one_message_yields_one_connected_trace_across_collect_dispatch_and_the_node(
        start_stack, receiver: tuple[Receiver, int]) -> None:
    """A post's span in collect is the parent of dispatch's span for its stream entry, which is the parent of the node's
    span for the batch that wrote it: three services, one trace id."""
    found, port = receiver
    stack: RunningStack = start_stack(nodes=1, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}", OTEL_BSP_SCHEDULE_DELAY="100")
    c = stack.client
    ws = await c.connect("traced")
    code, posted = await c.post({"user_id": "traced", "payload": "follow me"})
    assert code == 202 and await receive_ids(ws, 1) == [posted["id"]]

    async def chain() -> list[Span] | None:
        """The post's span, its entry's and the batch's, once all three have been exported."""
        posts = [s for s in found.spans if (s.service, s.name) == ("collect", "collect.post")]
        for post in posts:
            entry = next((s for s in found.spans if s.name == "dispatch.entry" and s.parent_id == post.span_id), None)
            batch = entry and next((s for s in found.spans if s.name == "push.batch" and s.parent_id == entry.span_id), None)
            if entry and batch:
                return [post, entry, batch]
        return None

    post, entry, batch = await until(chain, lambda spans: spans is not None, what="the three spans of one message exported")
    assert (entry.service, batch.service) == ("dispatch", "push")
    assert post.trace_id == entry.trace_id == batch.trace_id and post.parent_id == ""
    await ws.close()


@pytest.mark.parametrize("service", ["collect", "dispatch", "push"])
def test_without_an_endpoint_tracing_stays_off_and_loads_no_sdk(service: str) -> None:
    """No OTEL_EXPORTER_OTLP_ENDPOINT: ``configure`` leaves tracing off, spans are the shared no-op, the SDK unimported."""
    code = ("import os, sys; os.environ.pop('OTEL_EXPORTER_OTLP_ENDPOINT', None); from shared.infra import tracing; "
            f"tracing.configure({service!r}); "
            "assert not tracing.enabled(); "
            "assert tracing.span('x') is tracing.span('y'); "
            "assert not any(m.startswith('opentelemetry.sdk') for m in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
