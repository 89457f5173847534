"""A post without an Idempotency-Key goes to dispatch while its MongoDB insert runs; the others wait for the insert."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.client import frames_within, next_frame
from tests.conftest import RunningStack
from tests.waits import scaled, stopped, until
from tools.cluster import Cluster, Proc, free_port


def own_store(start_stack, cluster: Cluster, **env: str) -> tuple[RunningStack, Proc]:
    """A stack on a FerretDB of its own (to be SIGSTOPped), and that FerretDB."""
    port = free_port()
    ferretdb = cluster.start_ferretdb(port)
    return start_stack(mongo_url=f"mongodb://127.0.0.1:{port}/", **env), ferretdb


async def test_a_post_without_a_key_reaches_its_socket_while_its_insert_is_still_running(start_stack, cluster: Cluster) -> None:
    """With FerretDB stopped mid-way, an unkeyed post's message arrives on the socket before its 202, which follows
    once the insert finishes."""
    stack, ferretdb = own_store(start_stack, cluster)
    ws = await stack.client.connect("early")
    await stack.client.post_until_accepted({"user_id": "early", "payload": "warm"})
    assert (await next_frame(ws))["payload"] == "warm"
    async with stopped(ferretdb):
        posting = asyncio.create_task(stack.client.post({"user_id": "early", "payload": "while storing"}))
        frame = await next_frame(ws)
        assert not posting.done(), f"the 202 came first (FerretDB's state: {ferretdb.state})"
    code, body = await posting
    assert (code, frame["payload"]) == (202, "while storing"), body
    assert frame["id"] == body["id"]
    await ws.close()


async def test_the_first_post_after_a_start_goes_out_while_its_insert_runs(start_stack, cluster: Cluster) -> None:
    """collect created its indexes at start, so it trusts the store from its first post: with no post before and
    FerretDB stopped, that first post's message still arrives before its 202."""
    stack, ferretdb = own_store(start_stack, cluster)
    ws = await stack.client.connect("first-ever")
    async with stopped(ferretdb):
        posting = asyncio.create_task(stack.client.post({"user_id": "first-ever", "payload": "first"}))
        frame = await next_frame(ws)
        assert not posting.done(), f"the 202 came first (FerretDB's state: {ferretdb.state})"
    code, body = await posting
    assert (code, frame["payload"], frame["id"]) == (202, "first", body["id"]), body
    await ws.close()


@pytest.mark.parametrize(("env", "headers"), [({}, {"Idempotency-Key": "k-1"}), ({"HANDOVER_WHILE_STORING": "0"}, {})],
                         ids=["keyed post", "switched off"])
async def test_a_keyed_post_or_any_post_with_the_setting_off_waits_for_its_insert(start_stack, cluster: Cluster,
                                                                                  env: dict[str, str], headers: dict[str, str]) -> None:
    """A post with an Idempotency-Key (a retry must not bring back what was acked or cancelled), or any post with
    HANDOVER_WHILE_STORING=0, reaches no socket while its insert is held, and arrives after its 202."""
    stack, ferretdb = own_store(start_stack, cluster, **env)
    ws = await stack.client.connect("late")
    await stack.client.post_until_accepted({"user_id": "late", "payload": "warm"})
    assert (await next_frame(ws))["payload"] == "warm"
    async with stopped(ferretdb):
        posting = asyncio.create_task(stack.client.post({"user_id": "late", "payload": "after the insert"}, headers=headers))
        early = await frames_within(ws, 1.5)
    assert early == []
    code, body = await posting
    assert code == 202, body
    assert (await next_frame(ws))["id"] == body["id"]
    await ws.close()


async def test_a_post_reaches_its_socket_while_another_posts_insert_is_still_running(start_stack, cluster: Cluster) -> None:
    """An unkeyed post's hand-over does not queue behind the insert of a post that came before it: with FerretDB
    stopped under the first post's insert, the second post's message still arrives, before either 202."""
    stack, ferretdb = own_store(start_stack, cluster)
    first_ws, second_ws = await stack.client.connect("first"), await stack.client.connect("second")
    await stack.client.post_until_accepted({"user_id": "first", "payload": "warm"})
    assert (await next_frame(first_ws))["payload"] == "warm"
    async with stopped(ferretdb):
        first = asyncio.create_task(stack.client.post({"user_id": "first", "payload": "stuck in its insert"}))
        assert (await next_frame(first_ws))["payload"] == "stuck in its insert"
        second = asyncio.create_task(stack.client.post({"user_id": "second", "payload": "behind it"}))
        frame = await next_frame(second_ws)
        assert not first.done() and not second.done(), f"an insert finished with FerretDB stopped ({ferretdb.state})"
    assert frame["payload"] == "behind it"
    (code, body), (second_code, _) = await first, await second
    assert (code, second_code) == (202, 202), body
    await first_ws.close()
    await second_ws.close()


async def test_a_post_handed_over_while_its_insert_runs_counts_once_in_its_tiers_backlog(start_stack, cluster: Cluster) -> None:
    """With dispatch stopped and FerretDB stopped under an unkeyed post's insert, the backlog its tier is shed by holds
    the post once (its stream entry), not once more as a post still being stored."""
    stack, ferretdb = own_store(start_stack, cluster, SHED_SAMPLE_MS="50")
    ws = await stack.client.connect("counted")
    await stack.client.post_until_accepted({"user_id": "counted", "payload": "warm"})
    assert (await next_frame(ws))["payload"] == "warm"  # read by dispatch: in no backlog now
    stack.procs["dispatch"].stop()

    async def backlog() -> float:
        return await stack.client.metric(stack.stack.collect_url, "push_tier_backlog", tier="normal")

    async with stopped(ferretdb):
        posting = asyncio.create_task(stack.client.post({"user_id": "counted", "payload": "stuck in its insert"}))
        readings = [await until(backlog, lambda n: n >= 1, what="the post in the normal tier's backlog")]
        with contextlib.suppress(TimeoutError):  # ten samples' time more, the post on the stream and in the store's lane
            async with asyncio.timeout(scaled(0.5)):
                while True:
                    readings.append(await backlog())
                    await asyncio.sleep(0.02)
        assert not posting.done(), f"the insert finished with FerretDB stopped ({ferretdb.state})"
    assert set(readings) == {1}, readings
    assert (await posting)[0] == 202
    await ws.close()
