"""Hypothesis strategies for the fuzz tests, and a counter of each input's outcome for the run summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import strategies as st

from shared.wire.errors import MalformedRequest

INT64 = st.integers(-(2**63), 2**63 - 1)
TRICKY = st.sampled_from(["ack", "ping", "deliver", "result", "", "0", "-1", "1e400", "\u0000", "\u2028"])
CHARACTERS = st.characters(exclude_categories=()) | st.sampled_from('\ud800\udfff\x00{}[]"\\:,')
# What orjson can encode (no lone surrogates, no integers past 64 bits); nested two deep: recursive strategies are slow.
SCALARS = st.none() | st.booleans() | INT64 | st.floats() | st.text(max_size=12) | TRICKY
SHALLOW = SCALARS | st.lists(SCALARS, max_size=4) | st.dictionaries(st.text(max_size=6), SCALARS, max_size=4)
JSON_VALUES = SHALLOW | st.lists(SHALLOW, max_size=4) | st.dictionaries(st.text(max_size=6) | TRICKY, SHALLOW, max_size=4)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = JSON_VALUES) -> st.SearchStrategy[Any]:
    """``good`` or ``bad`` half the time each (``a | b`` would weigh each of ``bad``'s many branches like ``good``)."""
    return st.booleans().flatmap(lambda right: good if right else bad)


def encoded(values: st.SearchStrategy[Any]) -> st.SearchStrategy[str | bytes]:
    """JSON values encoded as bytes or text, sometimes with a byte replaced or cut short there."""
    raw = values.map(orjson.dumps)
    damaged = st.tuples(raw, st.integers(0, 2**16), st.binary(max_size=1)).map(
        lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1) + 1:] if t[2] else t[0][: t[1] % (len(t[0]) + 1)])
    as_bytes = raw | damaged
    return as_bytes | as_bytes.map(lambda b: b.decode("utf-8", "replace"))


def wire_inputs(frame_fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[str | bytes]:
    """Anything a socket can carry: random bytes and text (lone surrogates included), JSON, and (half the time) frames
    with all or some of ``frame_fields``."""
    frames = (st.fixed_dictionaries(frame_fields, optional={"x": JSON_VALUES})
              | st.fixed_dictionaries({}, optional={**frame_fields, "x": JSON_VALUES}))
    return st.binary(max_size=200) | st.text(CHARACTERS, max_size=200) | encoded(JSON_VALUES) | mostly(encoded(frames))


class Outcomes:
    """Counts each input's outcome: the parsed type's name, ``malformed`` (refused as documented), or ``crash``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def run(self, parse: Callable[[Any], Any], data: Any) -> Any:
        """``parse(data)``: what it parsed, or None when it raised ``MalformedRequest``; anything else is re-raised."""
        try:
            parsed = parse(data)
        except MalformedRequest as exc:
            self.counts[exc.code] += 1
            return None
        except Exception:
            self.counts["crash"] += 1
            raise
        self.counts[type(parsed).__name__] += 1
        return parsed
