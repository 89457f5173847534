"""Property-based fuzzing of the wire protocol's parsers (pure logic): any input parses or is refused as documented."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.wire.protocol import MAX_ACK_IDS, AckFrame, BatchResult, DeliverBatch, Delivery, MessageFrame, PingFrame, parse_client_frame
from tests.conftest import report_fuzz
from tests.fuzz.strategies import INT64, JSON_VALUES, Outcomes, mostly, wire_inputs

FUZZ = settings(max_examples=2000, deadline=None, database=None)
ROUND_TRIPS = settings(max_examples=600, deadline=None, database=None)

CLIENT_FIELDS = {"type": mostly(st.sampled_from(["ack", "ping"]), st.sampled_from(["pong", "message", "ACK", ""]) | JSON_VALUES),
                 "id": mostly(st.text(max_size=30)),
                 "ids": mostly(st.lists(st.text(max_size=30), max_size=4), st.lists(JSON_VALUES, max_size=4) | JSON_VALUES)}
ITEM = st.tuples(st.text(max_size=20), st.text(max_size=40), INT64, st.lists(st.text(max_size=8), max_size=3)).map(list)
LINK_FIELDS = {"type": mostly(st.sampled_from(["deliver", "result"])),
               "batch": mostly(INT64), "at": mostly(INT64), "delivered": mostly(INT64),
               "items": mostly(st.lists(mostly(ITEM, st.lists(JSON_VALUES, max_size=5) | JSON_VALUES), max_size=4))}


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
    """Any bytes, text or JSON a browser can send parses to an ack or ping, or raises MalformedRequest, nothing else."""
    outcomes = fuzz_parser("protocol: parse_client_frame", parse_client_frame, wire_inputs(CLIENT_FIELDS))
    assert outcomes.counts["malformed"] and outcomes.counts["AckFrame"] + outcomes.counts["PingFrame"]


def test_deliver_batch_decoder_parses_or_refuses_any_input() -> None:
    """Any bytes, text or JSON on the dispatch link decodes to a DeliverBatch or raises MalformedRequest."""
    outcomes = fuzz_parser("protocol: DeliverBatch.decode", DeliverBatch.decode, wire_inputs(LINK_FIELDS))
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


@ROUND_TRIPS
@given(st.builds(DeliverBatch, INT64, INT64, st.lists(
    st.builds(Delivery, st.text(), st.builds(MessageFrame, st.text(), JSON_VALUES, INT64).map(MessageFrame.encode) | st.text(),
              INT64, st.lists(st.text(), max_size=5).map(tuple)), max_size=8).map(tuple)))
def test_deliver_batches_round_trip(batch: DeliverBatch) -> None:
    """Any batch dispatch encodes decodes to the same batch on the node, as bytes or as text."""
    data = batch.encode()
    assert DeliverBatch.decode(data) == batch
    assert DeliverBatch.decode(data.decode()) == batch


@ROUND_TRIPS
@given(st.builds(BatchResult, INT64, INT64))
def test_batch_results_round_trip(result: BatchResult) -> None:
    """Any result a node encodes decodes to the same result in dispatch."""
    assert BatchResult.decode(result.encode()) == result
