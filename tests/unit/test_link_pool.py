"""dispatch's links to push nodes: the in-flight count, answers matched by batch id, failures, and the pool of links.

The node is an in-process websocket listener that admits the signed handshake and answers when the test says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from services.dispatch.link_pool import LinkPool, NodeLink
from shared.cluster.routes import NodeCard
from shared.infra.clock import now_ms
from shared.wire.errors import LinkDown
from shared.wire.protocol import BatchResult, DeliverBatch, Delivery
from shared.wire.signing import PROOF_HEADER, LinkGuard, LinkRequest
from tests.waits import until

KEY, NODE = "unit-internal-key", "node-1"
ITEMS = [Delivery("m1", b'{"type": "message"}', 1, ("u",))]


class Node:
    """A push node's link endpoint: checks the handshake like a node, proves the key, keeps the batches it reads."""

    def __init__(self) -> None:
        self.guard = LinkGuard(KEY, NODE)
        self.batches: list[int] = []
        self.connections: list[ServerConnection] = []
        self.server: Server | None = None

    def admit(self, _: ServerConnection, request: Request) -> None:
        self.guard.admit(request.headers, request.method, "/internal", "link", now_ms())

    def prove(self, _: ServerConnection, request: Request, response: Response) -> Response:
        response.headers = Headers(response.headers)
        response.headers[PROOF_HEADER] = LinkRequest.from_headers(request.headers, request.method, "/internal").answer(KEY)
        return response

    async def handle(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        async for data in ws:
            self.batches.append(DeliverBatch.decode(data).batch)

    async def answer(self, batch: int, delivered: int) -> None:
        await self.connections[-1].send(BatchResult(batch, delivered).encode().decode())

    def card(self) -> NodeCard:
        assert self.server is not None
        return NodeCard(NODE, f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/internal", "ws://public")


@pytest_asyncio.fixture
async def node() -> AsyncIterator[Node]:
    n = Node()
    async with serve(n.handle, "127.0.0.1", 0, process_request=n.admit, process_response=n.prove) as n.server:
        yield n


async def test_in_flight_counts_unanswered_batches_and_answers_reach_their_own_sender(node: Node) -> None:
    """Three batches sent at once count 3 in flight; answered out of order, each sender gets its own answer, and the
    count is back to 0."""
    link = NodeLink(node.card(), KEY, timeout=5)
    sends = [asyncio.create_task(link.send(ITEMS, 0)) for _ in range(3)]
    await until(lambda: len(node.batches), lambda n: n == 3, what="the node to read three batches")
    assert link.in_flight == 3
    for batch in (3, 1, 2):
        await node.answer(batch, batch * 10)
    assert [(await s).delivered for s in sends] == [10, 20, 30]
    assert link.in_flight == 0
    await link.close()


async def test_a_closed_link_fails_every_waiting_batch_and_the_next_send_reconnects(node: Node) -> None:
    """When the node closes the link, both unanswered batches fail with LinkDown at once; the next send opens a new
    link and is answered."""
    link = NodeLink(node.card(), KEY, timeout=5)
    sends = [asyncio.create_task(link.send(ITEMS, 0)) for _ in range(2)]
    await until(lambda: len(node.batches), lambda n: n == 2, what="the node to read two batches")
    await node.connections[-1].close()
    for send in sends:
        with pytest.raises(LinkDown):
            await send
    assert link.in_flight == 0
    retry = asyncio.create_task(link.send(ITEMS, 0))
    await until(lambda: len(node.batches), lambda n: n == 3, what="the retried batch to reach the node")
    await node.answer(node.batches[-1], 1)
    assert (await retry).delivered == 1 and len(node.connections) == 2
    await link.close()


async def test_a_node_that_never_answers_fails_the_batch_within_the_timeout(node: Node) -> None:
    """A batch the node reads but does not answer fails with LinkDown after the link's timeout, not later."""
    link = NodeLink(node.card(), KEY, timeout=0.2)
    with pytest.raises(LinkDown):
        await asyncio.wait_for(link.send(ITEMS, 0), 2)
    assert link.in_flight == 0 and node.batches == [1]
    await link.close()


async def test_the_pool_keeps_one_link_per_node_and_drops_those_of_nodes_gone_or_moved() -> None:
    """The pool hands out one link per node id; ``retain`` keeps a node still live at the same link URL, drops a
    node gone, and gives a node now at another URL a new link to the new URL."""
    pool = LinkPool(KEY, timeout=1)
    stay, gone, moved = (NodeCard(n, f"ws://127.0.0.1:1/{n}", "ws://public") for n in ("stay", "gone", "moved"))
    links = {card.id: pool.get(card) for card in (stay, gone, moved)}
    assert pool.get(stay) is links["stay"]
    moved_now = NodeCard("moved", "ws://127.0.0.1:2/moved", "ws://public")
    pool.retain({"stay": stay, "moved": moved_now})
    assert pool.links.keys() == {"stay", "moved"} and pool.links["stay"] is links["stay"]
    assert pool.links["moved"] is not links["moved"] and pool.get(moved_now).card.link_url == "ws://127.0.0.1:2/moved"
    await pool.close()
    assert pool.links == {}


async def test_a_node_the_pool_learns_of_is_linked_before_its_first_batch(node: Node) -> None:
    """``retain`` opens the link to a new live node at once (in the background): the node sees the handshake, and the
    first send goes over that link rather than opening one."""
    pool = LinkPool(KEY, timeout=2)
    pool.retain({NODE: node.card()})
    await until(lambda: len(node.connections), lambda n: n == 1, what="the link opened by retain")
    link = pool.get(node.card())
    sending = asyncio.create_task(link.send(ITEMS, 0))
    await until(lambda: node.batches, lambda b: b == [1], what="the first batch")
    await node.answer(1, 1)
    assert (await asyncio.wait_for(sending, 2)).delivered == 1
    assert len(node.connections) == 1
    await pool.close()
