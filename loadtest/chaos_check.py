"""The chaos run's verdict as a pure function: what was posted and answered, what every socket saw, the faults and
the status answers go in; counts per violation class (with examples) and the run's tallies come out.

Nothing here reads a clock or the network, so the unit tests feed it synthetic observations and prove each class
can fail. The classes and exactly what they count are described in ``loadtest/README.md`` ("chaos"); in short:
``lost`` (an owed delivery that never arrived), ``early`` (before its due time), ``after_cancel`` (a message whose
DELETE answered 200 arrived), ``wrong_user`` (on a socket it was not for), ``duplicate`` (written twice to one socket
before that socket acked it; a topic message twice at all), ``order`` (messages of one post to one user out of post
order on one socket), ``status`` (``GET /v1/messages/{id}`` contradicting what clients saw), ``topic_lost`` (a socket
subscribed before the post and open well after it, away from any fault, missed a topic or broadcast message),
``unaccepted`` (a message whose every post attempt was refused arrived), ``idempotency`` (one Idempotency-Key, two id
lists), ``server_error`` (a 5xx other than 503), ``acked_came_back`` (after Redis restarted empty, a message acked
before it arrived again), ``topic_gap`` (a socket's offsets of a topic, from the position its subscribe was told or
recovered from, with a hole, a repeat or, but for broadcasts, out of order) and ``recovery_refused`` (a resubscribe
told ``recovered: false`` though its position was in the same epoch and within the history's size).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

CLOCK_TOLERANCE_S = 0.05  # every process shares this machine's clock
EXPIRY_MARGIN_S = 2.0  # a settle socket welcomed this long before a message expires must get it
TOPIC_HOLD_S = 5.0  # a subscribed socket open this long after a topic post's answer (and due time) must have it
FAULT_QUIET_S = 10.0  # topic loss is not counted from a fault's start until this long after it ended
LIFECYCLE_LOSS_S = 3.0  # a node SIGKILLed this soon after writing a message may take its lifecycle marks along
KILL_NOTICED_S = 1.0  # a client may send an ack this long after its node was SIGKILLed, before its busy loop sees the close
EXAMPLES = 10
BROADCAST = "*"
OPEN_STATES = ("accepted", "scheduled", "due")
ACK_RECORDED_S = 3.0  # an ack this old is in Redis and on record in MongoDB (written once a second)
REDELIVERY_S = 30.0  # a dispatch instance SIGKILLed may have its entries sent again this long after it came back
HISTORY_SIZE = 100  # the stack's TOPIC_HISTORY_SIZE (its default): a position this close to the topic's is recoverable
CLASSES = ("lost", "early", "after_cancel", "wrong_user", "duplicate", "order", "status", "topic_lost", "unaccepted",
           "idempotency", "server_error", "acked_came_back", "topic_gap", "recovery_refused")


@dataclass(frozen=True, slots=True)
class Planned:
    """One message as posted: its label (in its payload), recipients or topic (``*``: broadcast) and timing."""

    tag: str
    users: tuple[str, ...] = ()
    topic: str | None = None
    priority: str = "normal"
    delay_ms: int = 0  # from delay_seconds
    deliver_at: int | None = None  # ms since the epoch, as posted
    ttl_ms: int = 3_600_000

    @property
    def scheduled(self) -> bool:
        return self.delay_ms > 0 or self.deliver_at is not None


@dataclass(slots=True)
class PostRecord:
    """One POST /v1/messages: its messages, when it left and was answered, the answer (``None``: none came)."""

    seq: int
    messages: tuple[Planned, ...]
    sent_at: float
    key: str | None = None
    answered_at: float | None = None
    status: int | None = None
    ids: tuple[str, ...] = ()
    error: str | None = None  # why no answer came (the client's exception)


@dataclass(slots=True)
class CancelRecord:
    message_id: str
    sent_at: float
    answered_at: float | None = None
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Arrival:
    """A message frame as a socket read it: its id, its payload's tag, ``ts`` (ms) and the client's wall time (s)."""

    message_id: str
    tag: str | None
    ts: int
    at: float
    topic: str | None = None  # the frame's topic, ``*`` for a broadcast
    offset: int | None = None  # a topic message's position
    epoch: str | None = None


@dataclass(slots=True)
class SocketRecord:
    """One websocket: whose, on which node (port), when welcomed and closed, its topics, frames and acks."""

    id: str
    user: str
    node: int
    settle: bool = False
    slow: bool = False
    bundles: int = 0  # websocket frames that brought several protocol frames (it asked for bundles)
    opened_at: float | None = None
    closed_at: float | None = None  # None: still open when the run ended
    server_closed: bool = False
    subscribe_sent: dict[str, float] = field(default_factory=dict)
    granted: dict[str, float] = field(default_factory=dict)
    refused: set[str] = field(default_factory=set)
    arrivals: list[Arrival] = field(default_factory=list)
    acks: dict[str, float] = field(default_factory=dict)  # message id -> when this socket first acked it
    told: dict[str, tuple[int, str]] = field(default_factory=dict)  # topic -> (offset, epoch) its subscribed answer gave
    recover_from: dict[str, tuple[int, str]] = field(default_factory=dict)  # topic -> position its subscribe recovered
    recovered: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """A fault: ``kill`` or ``stop`` (or a second-phase kind) of ``target`` (``push-<port>``, ``dispatch-<port>``, ...)
    from ``start`` until it was undone at ``end``; or ``rebuild``: a span dispatch reported the delivery state being
    rebuilt (nothing waiting is replayed and nothing scheduled fires until it ends)."""

    kind: str
    target: str
    start: float
    end: float

    def killed_node(self, port: int) -> bool:
        return self.kind == "kill" and self.target == f"push-{port}"


@dataclass(slots=True)
class Observations:
    posts: list[PostRecord] = field(default_factory=list)
    cancels: list[CancelRecord] = field(default_factory=list)
    sockets: list[SocketRecord] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    statuses: dict[str, tuple[int, Any]] = field(default_factory=dict)  # message id -> GET's status and body
    ended: float = 0.0
    rebuilding_since: float | None = None  # a rebuild span still open (``rebuild`` faults are recorded at their end)


@dataclass(slots=True)
class Report:
    counts: Counter[str] = field(default_factory=Counter)
    examples: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    tally: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < EXAMPLES:
            self.examples[kind].append(example)

    @property
    def violations(self) -> int:
        return sum(self.counts[k] for k in CLASSES)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message a 2xx answer gave an id: as posted, when its first attempt left (an Idempotency-Key's retry may be
    answered for an earlier attempt that was accepted) and when the last 2xx answer came."""

    message: Planned
    sent_at: float
    answered_at: float


def accepted(obs: Observations) -> dict[str, Accepted]:
    """Every message id a 2xx answer gave, with the message posted under it."""
    first: dict[str, float] = {}
    for p in obs.posts:
        if p.key is not None:
            first[p.key] = min(p.sent_at, first.get(p.key, p.sent_at))
    found: dict[str, Accepted] = {}
    for p in obs.posts:
        if p.status is not None and 200 <= p.status < 300 and p.answered_at is not None:
            sent = first.get(p.key, p.sent_at) if p.key is not None else p.sent_at
            for mid, m in zip(p.ids, p.messages):
                answered = max(p.answered_at, found[mid].answered_at) if mid in found else p.answered_at
                found[mid] = Accepted(m, sent, answered)
    return found


def cancel_outcomes(obs: Observations) -> tuple[set[str], set[str]]:
    """The ids a DELETE answered 200 for, and those whose DELETE got no answer (maybe cancelled)."""
    done = {c.message_id for c in obs.cancels if c.status == 200}
    unknown = {c.message_id for c in obs.cancels if c.status is None} - done
    return done, unknown


def owed(obs: Observations) -> dict[tuple[str, str], float]:
    """Each (message id, user) the cluster owes: a user message answered 2xx, not cancelled (or maybe cancelled),
    whose recipient had a settle socket welcomed, and the message was due, ``EXPIRY_MARGIN_S`` before it expired (its
    expiry counted from when its post left, which is no later than collect's acceptance) outside any rebuild span
    (nothing waiting is sent while the state is rebuilt); with the message's due time (s, at the latest)."""
    cancelled, unknown = cancel_outcomes(obs)
    welcomed: dict[str, float] = {}
    for s in obs.sockets:
        if s.settle and s.opened_at is not None:
            welcomed[s.user] = min(s.opened_at, welcomed.get(s.user, s.opened_at))
    rebuilds = sorted((f.start, f.end) for f in obs.faults if f.kind == "rebuild")
    debts = {}
    for mid, a in accepted(obs).items():
        if a.message.topic is not None or mid in cancelled or mid in unknown:
            continue
        expires = a.sent_at + a.message.ttl_ms / 1000
        due = due_at(a, a.answered_at)
        for user in a.message.users:
            if user in welcomed and after_rebuilds(max(welcomed[user], due), rebuilds) + EXPIRY_MARGIN_S <= expires:
                debts[(mid, user)] = due
    return debts


def after_rebuilds(moment: float, rebuilds: list[tuple[float, float]]) -> float:
    """The first time from ``moment`` on outside every rebuild span (``rebuilds`` sorted by start)."""
    for start, end in rebuilds:
        if start <= moment < end:
            moment = end
    return moment


def due_at(a: Accepted, accepted_at: float) -> float:
    """When message ``a`` may be delivered (s), if collect accepted it at ``accepted_at``."""
    m = a.message
    if m.deliver_at is not None and m.deliver_at / 1000 > accepted_at:
        return m.deliver_at / 1000
    return accepted_at + m.delay_ms / 1000


def arrived(obs: Observations) -> set[tuple[str, str]]:
    return {(a.message_id, s.user) for s in obs.sockets for a in s.arrivals}


def check(obs: Observations) -> Report:
    """Count every violation class over one run's observations; ``Report.violations`` is 0 for a clean run."""
    report = Report()
    report.counts.update({k: 0 for k in CLASSES})
    known = accepted(obs)
    by_tag = {m.tag: m for p in obs.posts for m in p.messages}
    _check_answers(obs, report)
    _check_arrivals(obs, known, by_tag, report)
    _check_lost(obs, report)
    _check_topics(obs, known, report)
    _check_statuses(obs, known, report)
    _check_acked_came_back(obs, report)
    _check_positions(obs, report)
    _tally(obs, known, report)
    return report


def _check_answers(obs: Observations, report: Report) -> None:
    ids_by_key: defaultdict[str, set[tuple[str, ...]]] = defaultdict(set)
    for p in obs.posts:
        if p.key is not None and p.status is not None and 200 <= p.status < 300:
            ids_by_key[p.key].add(p.ids)
    for key, answers in ids_by_key.items():
        if len(answers) > 1:
            report.add("idempotency", f"Idempotency-Key {key}: {len(answers)} different id lists {sorted(answers)}")
    for what, status in [*((f"POST #{p.seq}", p.status) for p in obs.posts),
                         *((f"DELETE {c.message_id}", c.status) for c in obs.cancels),
                         *((f"GET {mid}", s) for mid, (s, _) in obs.statuses.items())]:
        if status is not None and status >= 500 and status != 503:
            report.add("server_error", f"{what} answered {status}")


def _check_arrivals(obs: Observations, known: dict[str, Accepted], by_tag: dict[str, Planned], report: Report) -> None:
    cancelled, _ = cancel_outcomes(obs)
    refused_only = _refused_tags(obs)
    report.tally["redelivered after ack"] = 0
    for s in obs.sockets:
        seen: dict[str, Arrival] = {}
        highest: dict[str, tuple[int, str]] = {}  # post id -> highest index first arrived in order here
        for a in s.arrivals:
            where = f"{a.message_id} on socket {s.id} of {s.user} (node {s.node}) at {a.at:.3f}"
            entry = known.get(a.message_id)
            message = entry.message if entry else by_tag.get(a.tag or "")
            if entry is None and (message is None or message.tag in refused_only):
                report.add("unaccepted", f"{where}: no post of it (tag {a.tag}) was accepted")
            if message is not None:
                _check_one(s, a, message, where, report)
            if a.message_id in cancelled:
                cancel_answer = max((c.answered_at or 0) for c in obs.cancels if c.message_id == a.message_id)
                report.add("after_cancel", f"{where}: DELETE answered 200 at {cancel_answer:.3f}")
            first = seen.get(a.message_id)
            if first is not None:
                acked = s.acks.get(a.message_id)
                if a.topic is not None or acked is None or acked > a.at:
                    report.add("duplicate", f"{where}: already arrived at {first.at:.3f}, not acked before")
                else:
                    report.tally["redelivered after ack"] += 1
                continue
            seen[a.message_id] = a
            if entry is not None and not entry.message.scheduled and s.user in entry.message.users and _quiet(obs, entry.sent_at, a.at):
                _check_order(a.message_id, entry, highest, where, report)  # across a fault's retries order is not promised


def _refused_tags(obs: Observations) -> set[str]:
    """Tags of messages every post attempt of which got a definite refusal (4xx: nothing was stored)."""
    answers: defaultdict[str, set[int | None]] = defaultdict(set)
    for p in obs.posts:
        for m in p.messages:
            answers[m.tag].add(p.status)
    return {tag for tag, statuses in answers.items() if all(s is not None and 400 <= s < 500 for s in statuses)}


def _check_one(s: SocketRecord, a: Arrival, m: Planned, where: str, report: Report) -> None:
    due = (m.deliver_at / 1000 if m.deliver_at is not None and m.deliver_at > a.ts else a.ts / 1000 + m.delay_ms / 1000)
    if a.at < due - CLOCK_TOLERANCE_S:
        report.add("early", f"{where}: due at {due:.3f}, {due - a.at:.3f} s early")
    if m.topic is None:
        if s.user not in m.users or a.topic is not None:
            report.add("wrong_user", f"{where}: addressed to {', '.join(m.users) or m.topic}")
    elif a.topic != m.topic:
        report.add("wrong_user", f"{where}: posted to topic {m.topic}, the frame says {a.topic}")
    elif m.topic != BROADCAST:
        asked = s.subscribe_sent.get(m.topic)
        if asked is None or asked > a.at or m.topic in s.refused:
            state = "refused" if m.topic in s.refused else "never asked" if asked is None else f"asked at {asked:.3f}"
            report.add("wrong_user", f"{where}: topic {m.topic} ({state})")


def _check_order(mid: str, entry: Accepted, highest: dict[str, tuple[int, str]], where: str, report: Report) -> None:
    """Messages of one post to one user, at once and of one priority, first arrive on a socket in post order (checked
    where no fault touched the span from the post to the arrival: README, order is not guaranteed across a retry)."""
    post, index = mid[:-4], int(mid[-4:], 16)
    group = f"{post}:{entry.message.priority}"
    if group in highest and highest[group][0] > index:
        report.add("order", f"{where}: message {index} of its post after message {highest[group][0]} ({highest[group][1]})")
    elif group not in highest or highest[group][0] < index:
        highest[group] = (index, mid)


def _check_lost(obs: Observations, report: Report) -> None:
    got = arrived(obs)
    for (mid, user), due in sorted(owed(obs).items()):
        if (mid, user) not in got:
            report.add("lost", f"{mid} for {user}: due at {due:.3f}, never arrived")


def _quiet(obs: Observations, start: float, end: float) -> bool:
    """No fault touched the span ``start``..``end`` (each fault's window runs ``FAULT_QUIET_S`` past its end)."""
    return all(f.end + FAULT_QUIET_S < start or f.start > end for f in obs.faults)


def _check_topics(obs: Observations, known: dict[str, Accepted], report: Report) -> None:
    """A topic (or broadcast) message must reach each socket subscribed (welcomed) before its post left (before its
    due time, if scheduled), open and read fast until ``TOPIC_HOLD_S`` after its answer and due time, closed only by
    the client, with no fault anywhere in that span: those are at most once, never replayed, so nothing else is owed."""
    cancelled, unknown = cancel_outcomes(obs)
    checked = 0
    for mid, a in known.items():
        m = a.message
        if m.topic is None or mid in cancelled or mid in unknown:
            continue
        start, end = due_at(a, a.sent_at), due_at(a, a.answered_at) + TOPIC_HOLD_S
        if not _quiet(obs, a.sent_at, end):
            continue
        for s in obs.sockets:
            since = s.opened_at if m.topic == BROADCAST else s.granted.get(m.topic)
            closed = s.closed_at if s.closed_at is not None else obs.ended
            if since is None or since >= start or closed < end or s.server_closed or s.slow:
                continue
            checked += 1
            if not any(x.message_id == mid for x in s.arrivals):
                report.add("topic_lost", f"{mid} ({m.topic}) for socket {s.id} of {s.user} (node {s.node}): subscribed "
                           f"at {since:.3f}, open until {closed:.3f}, posted at {a.sent_at:.3f}, due from {start:.3f}")
    report.tally["topic deliveries checked"] = checked


def _check_statuses(obs: Observations, known: dict[str, Accepted], report: Report) -> None:
    """Per recipient: a delivery that arrived is past accepted/scheduled (unless every arrival was on a node SIGKILLed
    before its lifecycle marks were written), one that never arrived is not acked, a DELETE 200 shows cancelled and
    only then."""
    cancelled, unknown = cancel_outcomes(obs)
    arrivals: defaultdict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for s in obs.sockets:
        for a in s.arrivals:
            arrivals[(a.message_id, s.user)].append((a.at, s.node))
    for mid, (code, body) in sorted(obs.statuses.items()):
        if known.get(mid) is None or known[mid].message.topic is not None:
            continue
        if code != 200:
            report.add("status", f"GET {mid} answered {code} for an accepted message")
            continue
        for row in recipients(body):
            user, state = row["user_id"], row["state"]
            seen = arrivals.get((mid, user), [])
            where = f"{mid} for {user}: state {state}"
            if seen and state in OPEN_STATES and not all(_marks_lost(obs, at, node) for at, node in seen):
                report.add("status", f"{where}, but it arrived at {seen[0][0]:.3f}")
            elif not seen and state == "acked":
                report.add("status", f"{where}, but no socket of {user} received it")
            if mid not in unknown and (state == "cancelled") != (mid in cancelled):
                report.add("status", f"{where}, DELETE {'answered 200' if mid in cancelled else 'never answered 200'}")


def recipients(body: Any) -> list[dict[str, Any]]:
    """The per-recipient rows of a status answer (none if it is not one)."""
    return body.get("recipients", []) if isinstance(body, dict) else []


def _marks_lost(obs: Observations, at: float, node: int) -> bool:
    return any(f.killed_node(node) and at - KILL_NOTICED_S <= f.start <= at + LIFECYCLE_LOSS_S for f in obs.faults)


def _check_acked_came_back(obs: Observations, report: Report) -> None:
    """After Redis restarted empty (and was rebuilt from MongoDB), a message its user acked ``ACK_RECORDED_S`` before
    the restart arrives again on a socket of that user (README: "acked ones do not come back"), away from a dispatch
    instance's SIGKILL (whose claimed entries may be sent again to every socket: at least once). An ack whose node was
    SIGKILLed within ``LIFECYCLE_LOSS_S`` after it is excused (its lifecycle mark may have died with the node: README's
    fault table), as ``_marks_lost`` excuses a status."""
    restarts = [f for f in obs.faults if f.kind == "redis"]
    retries = [f for f in obs.faults if f.kind == "kill" and f.target.startswith("dispatch")]
    acked: defaultdict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for s in obs.sockets:
        for mid, when in s.acks.items():
            acked[(mid, s.user)].append((when, s.node))
    for s in obs.sockets:
        for a in s.arrivals:
            for restart in restarts:
                if not restart.start < a.at or any(k.start <= a.at <= k.end + REDELIVERY_S for k in retries):
                    continue
                recorded = [at for at, node in acked.get((a.message_id, s.user), [])
                            if at + ACK_RECORDED_S <= restart.start and not _marks_lost(obs, at, node)]
                if recorded:
                    acks = ", ".join(f"{at:.3f} on push-{node}" for at, node in sorted(acked[(a.message_id, s.user)]))
                    report.add("acked_came_back", f"{a.message_id} on socket {s.id} of {s.user} at {a.at:.3f}: acked at "
                               f"{acks}, before {restart.target} restarted at {restart.start:.3f}")
                    break


def _check_positions(obs: Observations, report: Report) -> None:
    """On each socket, each topic's offsets in the epoch its subscribe was told run on from that position (or the one
    it recovered from) with no hole and no repeat, in order but for broadcasts (``*``: they reach a socket from its
    welcome, before its subscribe, so a recovery of them may follow later ones); and a recovery is refused only when
    its position was in another epoch or further back than the history keeps."""
    restarts = [f for f in obs.faults if f.kind == "redis"]
    outcomes: Counter[str] = Counter()
    for s in obs.sockets:
        for topic, (told, epoch) in s.told.items():
            recovered = s.recovered.get(topic)
            if recovered is not None:
                outcomes["recovered" if recovered else "refused"] += 1
            start = s.recover_from[topic][0] if recovered else told
            offsets = [a.offset for a in s.arrivals if a.topic == topic and a.epoch == epoch and a.offset is not None]
            after = [o for o in offsets if o > start]
            where = f"socket {s.id} of {s.user} (node {s.node}), topic {topic}, from {start}"
            if sorted(set(after)) != list(range(start + 1, start + 1 + len(set(after)))) or len(set(after)) != len(after):
                report.add("topic_gap", f"{where}: offsets {after[:20]}")
            elif topic != BROADCAST and after != sorted(after):
                report.add("topic_gap", f"{where}: out of order {after[:20]}")
            if recovered is False:
                since, old_epoch = s.recover_from[topic]
                opened = s.opened_at or 0.0
                if old_epoch == epoch and told - since <= HISTORY_SIZE and not any(f.start <= opened for f in restarts):
                    report.add("recovery_refused", f"{where}: asked from {since}, the topic at {told}, epoch {epoch}")
    report.tally["topic recoveries answered true"] = outcomes["recovered"]
    report.tally["topic recoveries answered false"] = outcomes["refused"]


def _tally(obs: Observations, known: dict[str, Accepted], report: Report) -> None:
    t = report.tally
    for kind, records in (("posts", obs.posts), ("cancels", obs.cancels)):
        for r in records:
            name = f"{kind} answered {r.status}" if r.status is not None else f"{kind} unanswered ({r.error})"
            t[name] = t.get(name, 0) + 1
    debts, got = owed(obs), arrived(obs)
    t["messages accepted"] = len(known)
    t["deliveries accepted"] = sum(len(a.message.users) for a in known.values())
    t["deliveries owed"] = len(debts)
    t["deliveries owed and arrived"] = len(debts.keys() & got)
    t["frames received"] = sum(len(s.arrivals) for s in obs.sockets)
    t["bundles received (websocket frames of several)"] = sum(s.bundles for s in obs.sockets)
    t["sockets welcomed"] = sum(s.opened_at is not None for s in obs.sockets)
    t["statuses read"] = len(obs.statuses)
    for f in obs.faults:
        name = "state rebuilt (spans)" if f.kind == "rebuild" else f"faults {f.kind}"
        t[name] = t.get(name, 0) + 1
