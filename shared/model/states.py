"""A delivery's states, one per (message, recipient), as the status API reports them.

    accepted -> [scheduled -> due] -> dispatched -> delivered -> acked
          \\           \\               \\             \\-> expired | trimmed
           \\           \\-> cancelled    \\-> expired | trimmed
            \\-> expired | trimmed

* ``accepted``: stored in MongoDB and answered 2xx (the post's document);
* ``scheduled``: held back until its due time (the document says when); ``due``: handed over to
  dispatch at that time by the instance that fired it (``services.dispatch.firing``);
* ``dispatched``: a push node holding the recipient took it; ``delivered``: written to a socket;
* closing states, after which nothing reaches the recipient: ``acked`` (the client confirmed it),
  ``expired`` (its TTL passed first), ``cancelled`` (taken back before it fell due), ``trimmed``
  (pushed out of the recipient's inbox by ``INBOX_LIMIT`` newer messages, whoever sent them).

When several are recorded the highest ``PRECEDENCE`` names the state: an ack recorded after a late
expiry still says ``acked``.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    DUE = "due"
    DISPATCHED = "dispatched"
    DELIVERED = "delivered"
    TRIMMED = "trimmed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    ACKED = "acked"


PRECEDENCE = {state.value: rank for rank, state in enumerate(State)}
CLOSING = (State.ACKED.value, State.EXPIRED.value, State.CANCELLED.value, State.TRIMMED.value)
# accepted and scheduled (with the due time) are the post's document itself; the others are lifecycle events
STAGES = tuple(s for s in PRECEDENCE if s not in (State.ACCEPTED, State.SCHEDULED))
