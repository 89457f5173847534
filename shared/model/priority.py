"""Priority tiers: a message is ``high``, ``normal`` (the default) or ``low``.

Each tier has its own delivery stream (``shared.delivery.stream``), so a backlog of low never stands in front
of high; dispatch serves the tiers in ``TIERS`` order, and collect sheds new posts of the lower
tiers first when their backlog grows (``services/collect/shedding.py``). A post is one stream
entry, so it travels at the tier of its most urgent message.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


TIERS = (Priority.HIGH, Priority.NORMAL, Priority.LOW)  # the order dispatch serves them in


def post_tier(priorities: Iterable[Priority]) -> Priority:
    """The tier of a post: that of its most urgent message."""
    return min(priorities, key=TIERS.index, default=Priority.NORMAL)
