"""Property-based fuzzing of the wire protocol's parsers (pure logic): any input parses or is refused as documented."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.model.message import BROADCAST
from shared.model.priority import Priority
from shared.model.topics import NAME
from shared.wire.errors import MalformedRequest
from shared.wire.protocol import (
    MAX_ACK_IDS,
    USER_ID_PATTERN,
    AckFrame,
    BatchResult,
    DeliverBatch,
    Delivery,
    MessageFrame,
    PingFrame,
    parse_client_frame,
)
from tests.conftest import report_fuzz
from tests.fuzz.strategies import INT64, JSON_VALUES, Outcomes, mostly, wire_inputs

FUZZ = settings(max_examples=2000, deadline=None, database=None)
ROUND_TRIPS = settings(max_examples=600, deadline=None, database=None)

CLIENT_FIELDS = {"type": mostly(st.sampled_from(["ack", "ping", "refresh"]), st.sampled_from(["pong", "message", "ACK", ""]) | JSON_VALUES),
                 "id": mostly(st.text(max_size=30)), "token": mostly(st.text(max_size=30)),
                 "ids": mostly(st.lists(st.text(max_size=30), max_size=4), st.lists(JSON_VALUES, max_size=4) | JSON_VALUES)}
ITEM = st.tuples(st.text(max_size=20), st.integers(0, 12), INT64, st.lists(st.text(max_size=8), max_size=3)).map(list)
LINK_FIELDS = {"type": mostly(st.sampled_from(["deliver", "result"])),
               "batch": mostly(INT64), "at": mostly(INT64), "delivered": mostly(INT64),
               "items": mostly(st.lists(mostly(ITEM, st.lists(JSON_VALUES, max_size=5) | JSON_VALUES), max_size=4))}
# A deliver batch's head: half the time a well-formed one, else the link's fields in any state, or any JSON.
HEADS = mostly(st.fixed_dictionaries({"type": st.just("deliver"), "batch": INT64, "at": INT64, "items": st.lists(ITEM, max_size=4)}),
               st.fixed_dictionaries(LINK_FIELDS, optional={"x": JSON_VALUES}) | st.fixed_dictionaries({}, optional=LINK_FIELDS)
               | JSON_VALUES)

def named_bytes(head: Any) -> int:
    """The frame bytes a head's well-formed items name (0 when it names none)."""
    items = head.get("items") if isinstance(head, dict) else None
    return sum(i[1] for i in items if isinstance(i, list) and len(i) > 1 and type(i[1]) is int and 0 <= i[1] <= 12) \
        if isinstance(items, list) else 0


def deliver_messages(head: Any) -> st.SearchStrategy[bytes]:
    """``head`` as a binary deliver batch: its length (mostly the true one), the head (mostly; else any bytes), then
    mostly as many frame bytes as its items name, else any bytes."""
    data = orjson.dumps(head)
    frames = mostly(st.binary(min_size=named_bytes(head), max_size=named_bytes(head)), st.binary(max_size=40))
    return st.tuples(mostly(st.just(len(data)), st.integers(0, 2**32 - 1)), mostly(st.just(data), st.binary(max_size=40)),
                     frames).map(lambda t: t[0].to_bytes(4, "big") + t[1] + t[2])


def fuzz_parser(name: str, parse: Callable[[Any], Any], inputs: st.SearchStrategy[Any]) -> Outcomes:
    """Feed ``inputs`` to ``parse`` under hypothesis; record the outcomes for the run summary."""
    outcomes = Outcomes()

    @FUZZ
    @given(inputs)
    def run(data: Any) -> None:
        outcomes.run(parse, data)

    try:
        run()
    finally:
        report_fuzz(name, outcomes.counts, outcomes.counts["crash"])
    return outcomes


def test_client_frame_parser_parses_or_refuses_any_input() -> None:
    """Any bytes, text or JSON a browser can send parses to an ack, ping or refresh, or raises MalformedRequest, nothing
    else."""
    outcomes = fuzz_parser("protocol: parse_client_frame", parse_client_frame, wire_inputs(CLIENT_FIELDS))
    assert outcomes.counts["malformed"] and sum(outcomes.counts[kind] for kind in ("AckFrame", "PingFrame", "RefreshFrame"))


def test_deliver_batch_decoder_parses_or_refuses_any_input() -> None:
    """Any bytes, text or JSON on the dispatch link, and binary batches with any head, head length and frame bytes,
    decode to a DeliverBatch or raise MalformedRequest."""
    outcomes = fuzz_parser("protocol: DeliverBatch.decode", DeliverBatch.decode,
                           mostly(HEADS.flatmap(deliver_messages), wire_inputs(LINK_FIELDS)))
    assert outcomes.counts["malformed"] and outcomes.counts["DeliverBatch"]


def test_batch_result_decoder_parses_or_refuses_any_input() -> None:
    """Any bytes, text or JSON from a node decodes to a BatchResult or raises MalformedRequest."""
    outcomes = fuzz_parser("protocol: BatchResult.decode", BatchResult.decode, wire_inputs(LINK_FIELDS))
    assert outcomes.counts["malformed"] and outcomes.counts["BatchResult"]


@ROUND_TRIPS
@given(st.lists(st.text(), min_size=1, max_size=MAX_ACK_IDS))
def test_acks_round_trip(ids: list[str]) -> None:
    """An ack of any 1-1000 string ids, single or as a list, parses to exactly those ids."""
    assert parse_client_frame(orjson.dumps({"type": "ack", "ids": ids}).decode()) == AckFrame(tuple(ids))
    assert parse_client_frame(orjson.dumps({"type": "ack", "id": ids[0]}).decode()) == AckFrame((ids[0],))
    assert parse_client_frame('{"type": "ping"}') == PingFrame()


TOPICS = st.none() | st.just(BROADCAST) | st.from_regex(NAME, fullmatch=True)
FRAMES = st.builds(MessageFrame, st.text(), JSON_VALUES, INT64, st.none() | st.text()).map(MessageFrame.encode) | st.binary()
# Deliveries as dispatch makes them: hex message ids, valid user ids and topic names (what ``encoded_size`` relies on).
DELIVERIES = st.builds(Delivery, st.from_regex(r"[0-9a-f]{5,64}", fullmatch=True), FRAMES, INT64,
                       st.lists(st.from_regex(USER_ID_PATTERN, fullmatch=True), max_size=5).map(tuple), TOPICS,
                       st.sampled_from(Priority))


@ROUND_TRIPS
@given(st.builds(DeliverBatch, INT64, INT64, st.lists(DELIVERIES, max_size=8).map(tuple)))
def test_deliver_batches_round_trip_byte_for_byte_within_their_sized_bound(batch: DeliverBatch) -> None:
    """Any batch dispatch encodes decodes to the same batch on the node, every frame the same bytes; its items take at
    most the sum of their ``encoded_size`` (what dispatch's batching counts), and the same batch as text is refused."""
    data = batch.encode()
    assert DeliverBatch.decode(data) == batch
    assert len(data) - len(DeliverBatch(batch.batch, batch.at, ()).encode()) <= sum(item.encoded_size() for item in batch.items)
    with pytest.raises(MalformedRequest):
        DeliverBatch.decode(data.decode("latin-1"))


@ROUND_TRIPS
@given(st.builds(BatchResult, INT64, INT64))
def test_batch_results_round_trip(result: BatchResult) -> None:
    """Any result a node encodes decodes to the same result in dispatch."""
    assert BatchResult.decode(result.encode()) == result
