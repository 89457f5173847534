"""Group commit: concurrent callers share one flush, each gets its own results or the shared error."""

from __future__ import annotations

import asyncio

import pytest

from shared.infra.coalesce import Coalescer


async def test_callers_arriving_during_a_flush_share_the_next_one_and_get_their_own_results() -> None:
    """While the first flush runs, three more callers queue; they go out together in one second flush."""
    flushed: list[list[int]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        flushed.append(items)
        if len(flushed) == 1:
            await gate.wait()
        return [i * 10 for i in items]

    coalescer = Coalescer(flush)
    first = asyncio.create_task(coalescer.submit([1]))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(coalescer.submit(items)) for items in ([2, 3], [4], [5, 6])]
    await asyncio.sleep(0)
    gate.set()
    assert await first == [10]
    assert [await r for r in rest] == [[20, 30], [40], [50, 60]]
    assert flushed == [[1], [2, 3, 4, 5, 6]]


async def test_a_failed_flush_fails_every_caller_in_it_and_the_next_flush_still_runs() -> None:
    """An error reaches each caller of the failing batch; later callers are flushed normally."""
    calls = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("store down")
        return items

    coalescer = Coalescer(flush)
    with pytest.raises(RuntimeError, match="store down"):
        await coalescer.submit([1])
    assert await coalescer.submit([2]) == [2]


async def test_backlog_counts_the_calls_not_answered_yet_and_the_oldest_ones_wait() -> None:
    """A call being written and two queued behind it are a backlog of 3 whose age grows; answered, it is empty."""
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[int]:
        await gate.wait()
        return items

    coalescer = Coalescer(flush)
    assert coalescer.backlog() == (0, 0.0)
    calls = [asyncio.create_task(coalescer.submit([n])) for n in range(3)]
    await asyncio.sleep(0.02)
    waiting, waited = coalescer.backlog()
    assert waiting == 3 and waited >= 0.02
    gate.set()
    await asyncio.gather(*calls)
    assert coalescer.backlog() == (0, 0.0)
