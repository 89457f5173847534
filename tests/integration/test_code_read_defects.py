"""Guarantees a code read found broken (issue 17, part 5), each proven through the real processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import ClientConnection

from tests.conftest import RunningStack
from tests.waits import scaled
from tools.cluster import Cluster, free_port

ROOT = Path(__file__).resolve().parents[2]
SKEWED_CLOCK = Path(__file__).resolve().parent / "skewed_clock"  # a sitecustomize shifting time.time by CLOCK_SKEW_MS


def clock_ms() -> int:
    return int(time.time() * 1000)


async def next_message(ws: ClientConnection, timeout: float) -> tuple[dict, int]:
    """The next message frame and when it arrived (ms since epoch)."""
    async with asyncio.timeout(scaled(timeout)):
        while True:
            frame = orjson.loads(await ws.recv())
            if frame["type"] == "message":
                return frame, clock_ms()


def start_skewed_dispatch(stack: RunningStack, cluster: Cluster, skew_ms: int) -> None:
    """One more dispatch instance, on the same Redis and MongoDB, whose wall clock reads ``skew_ms`` ahead."""
    port = free_port()
    path = os.pathsep.join([str(SKEWED_CLOCK), str(ROOT), os.environ.get("PYTHONPATH", "")])
    stack.procs["dispatch-skewed"] = cluster.start_service("dispatch", stack.stack, port, DISPATCH_PORT=str(port),
                                                           PYTHONPATH=path, CLOCK_SKEW_MS=str(skew_ms))


async def test_a_dispatch_whose_clock_runs_ahead_does_not_fire_a_scheduled_message_early(start_stack, cluster: Cluster,
                                                                                        topology: str) -> None:
    """With a second dispatch instance whose clock reads 20 s ahead, a message due in a few seconds still arrives at
    its due time, not before: due times are compared on Redis's clock, not each instance's."""
    stack: RunningStack = start_stack()
    start_skewed_dispatch(stack, cluster, 20_000)
    ws = await stack.client.connect("punctual")
    deliver_at = clock_ms() + int(scaled(4000))
    code, answer = await stack.client.post({"user_id": "punctual", "payload": "on time", "deliver_at": deliver_at})
    assert code == 202, answer
    frame, at = await next_message(ws, timeout=15)
    assert frame["id"] == answer["id"]
    assert at >= deliver_at, f"arrived {deliver_at - at} ms before its due time"
    await ws.close()
