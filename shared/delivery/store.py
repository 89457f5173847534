"""The durable record in MongoDB: ``posts`` (one document per POST) and ``events`` (lifecycle).

MongoDB is written, never queried, on the hot path: the hot delivery state lives in Redis
(``shared.delivery.inbox``). Every write is an insert of one document per post, so the store suits
FerretDB 1.24, which answers most queries with a scan and updates slowly (see the README); the
queries below run off the hot path: the status view, the rebuild after Redis lost its data, and
the purge of old history.

* ``posts``: ``_id`` = post id (a message id is its post id plus its position); ``frames`` (each
  payload encoded once, as its recipients receive it, however many recipients: a BSON string, so the
  record reads as the JSON it is; the one place a frame is text, not bytes), ``users`` (each
  message's recipients joined by ``,``), ``expires`` (ms), ``sender``, ``ts`` and ``expires_at``
  (the latest); ``topics`` (each message's topic, or null for a message to users) only when the post
  has a topic or broadcast message; ``due`` (each message's due time in ms, or 0 for at once) only
  when the post has a scheduled message; ``priorities`` (each message's, ``shared.model.priority``) only
  when one is not normal. A duplicate ``_id`` means the post was already accepted (an
  Idempotency-Key retry).
* ``events``: per post and flush window one document ``{p, rows, closed, at}``, ``rows`` the JSON
  text of ``[{i, u, s: {stage: ms}}]``: each delivery's stages reached in that window (dispatched,
  delivered, acked, expired), so the usual path costs one insert per post, not one per delivery and
  stage. ``closed`` says a row was acked or expired. The rows are text, as a post's frames are, because
  nothing queries inside them and FerretDB converts every BSON value to JSONB on its way in: as an array
  of objects they cost PostgreSQL and FerretDB more than the posts themselves (``rows_of`` reads both:
  documents written before ``rows`` was text hold the array). A topic or broadcast message has a row per node instead, ``{i, node, k, s}``:
  how many of the node's sockets it was written to (``k``), and when. A scheduled message cancelled
  before it fired has a ``cancelled`` row per recipient, or one row ``{i, s}`` for a topic message.

Both carry ``purge_at``; a TTL index drops them where the server has TTL indexes, and dispatch
deletes them otherwise. Any driver failure becomes ``Unavailable`` (503 / retry) through one circuit
breaker: nobody is told a message is stored when the write was not acknowledged. A ``posts`` insert is
acknowledged only once journaled (``j: true``, beside whatever ``w`` the URL asks): a standalone MongoDB
otherwise answers before its next journal flush (up to 100 ms later), and a crash in between would lose
posts collect answered 202 for. FerretDB commits to PostgreSQL before answering either way. A document the
server refuses is the request's fault, not the database's: it fails its own post only (the other
posts of the same insert are stored whole) and never counts against the breaker.

A post's document holds the payloads as frame text, so a payload's keys, arrays and numbers never
reach MongoDB; what a post can break is the size of one document (``MAX_DOCUMENT_BYTES``), which
collect checks with ``post_bytes`` before storing anything. FerretDB 1.24 stores a larger document,
but a find whose reply batch then passes 48 MB fails, so a few such posts would stop the rebuild.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
import pymongo
from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError, WriteError

from shared.infra.breaker import CircuitBreaker
from shared.model.message import BROADCAST, Message, Pair, index_of, join_users, message_id, post_of, split_users, submitted_posts
from shared.model.priority import Priority
from shared.model.states import CLOSING, PRECEDENCE
from shared.wire.errors import InvalidFields, ServiceError, Unavailable

log = logging.getLogger(__name__)

PURGE_AFTER = dt.timedelta(days=30)
DUPLICATE_KEY = 11000
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # MongoDB's limit on one document (FerretDB reports it as maxBsonObjectSize)
# Write error codes that report the server's state rather than the document (MongoDB's retryable write errors).
SERVER_WRITE_ERRORS = frozenset({6, 7, 50, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
# BSON bytes besides the frame and recipients: per message its three array entries (type, key up to 5
# digits, length, terminator; its expiry), per post the field names, ids, times and array headers.
MESSAGE_BSON_BYTES, POST_BSON_BYTES = 39, 256
PRIORITY_BSON_BYTES = 17  # a ``priorities`` entry: type, key, length, "normal" and its terminator


def utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def post_document(messages: list[Message]) -> dict[str, Any]:
    """One post's messages, in position order, as one document."""
    first, expires = messages[0], max(m.expires_ms for m in messages)
    doc = {"_id": first.post, "sender": first.sender, "ts": first.ts, "frames": [m.frame.decode() for m in messages],
           "users": [join_users(m.users) for m in messages], "expires": [m.expires_ms for m in messages],
           "expires_at": utc(expires), "purge_at": utc(expires) + PURGE_AFTER}
    if any(m.topic is not None for m in messages):
        doc["topics"] = [m.topic for m in messages]
    if any(m.due_ms for m in messages):
        doc["due"] = [m.due_ms for m in messages]
    if any(m.priority is not Priority.NORMAL for m in messages):
        doc["priorities"] = [m.priority.value for m in messages]
    return doc


def post_bytes(messages: list[Message]) -> int:
    """An upper bound of the BSON size of ``post_document(messages)``, without encoding it."""
    return POST_BSON_BYTES + len(messages[0].sender.encode()) + sum(
        len(m.frame) + len(join_users(m.users)) + len(m.topic or "") + MESSAGE_BSON_BYTES for m in messages) + (
        PRIORITY_BSON_BYTES * len(messages) if any(m.priority is not Priority.NORMAL for m in messages) else 0)


def refused_by_document(exc: BaseException) -> bool:
    """Whether the server answered ``exc`` by refusing the documents written, rather than failing to
    write (network, timeout, no primary, write concern): then the database is up and the request is at fault."""
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors", [])
        return bool(errors) and not exc.details.get("writeConcernErrors") and all(
            e.get("code") not in SERVER_WRITE_ERRORS for e in errors)
    return isinstance(exc, WriteError) and exc.code not in SERVER_WRITE_ERRORS


def outcomes(posts: list[list[Message]], write_errors: list[dict[str, Any]]) -> tuple[list[Message], list[ServiceError | None]]:
    """Given an unordered insert's write errors (each naming its post's index): the messages of the
    posts it stored, and per message the error refusing its post, or None (stored now or before)."""
    errors = {e["index"]: e for e in write_errors}
    refusals: dict[int, ServiceError] = {i: InvalidFields(f"the store refused this post: {e.get('errmsg', '')[:200]}")
                                         for i, e in errors.items() if e.get("code") != DUPLICATE_KEY}
    fresh = [m for i, p in enumerate(posts) if i not in errors for m in p]
    return fresh, [refusals.get(i) for i, p in enumerate(posts) for _ in p]


def messages_of_document(doc: dict[str, Any]) -> list[Message]:
    topics = doc.get("topics") or [None] * len(doc["frames"])
    due = doc.get("due") or [0] * len(doc["frames"])
    priorities = doc.get("priorities") or [Priority.NORMAL.value] * len(doc["frames"])
    return [Message(message_id(doc["_id"], i), split_users(users), frame.encode(), doc["ts"], expires, doc["sender"], topic,
                    due_ms=due_ms, priority=Priority(priority))
            for i, (frame, users, expires, topic, due_ms, priority)
            in enumerate(zip(doc["frames"], doc["users"], doc["expires"], topics, due, priorities))]


@dataclass(slots=True)
class NodeCount:
    """What one node recorded of a topic message: the sockets it was written to, and each stage's time."""

    sockets: int = 0
    stages: dict[str, int] = field(default_factory=dict)


def event_documents(stages: dict[Pair, dict[str, int]], now: dt.datetime,
                    counts: Mapping[tuple[str, str], NodeCount] = MappingProxyType({})) -> list[dict[str, Any]]:
    """One document per post with a row per delivery, and per node for topic messages."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for (m, u), s in stages.items():
        rows.setdefault(post_of(m), []).append({"i": index_of(m), "u": u, "s": s})
    for (m, node), count in counts.items():
        rows.setdefault(post_of(m), []).append({"i": index_of(m), "node": node, "k": count.sockets, "s": count.stages})
    return [{"p": post, "rows": rows_text(r), "closed": any(c in row["s"] for row in r for c in CLOSING), "at": now,
             "purge_at": now + PURGE_AFTER} for post, r in rows.items()]


def rows_text(rows: list[dict[str, Any]]) -> str:
    """An event document's rows as stored: their JSON text."""
    return orjson.dumps(rows).decode()


def rows_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    """An event document's rows: its ``rows`` text read back (or the array a document written before held)."""
    rows = event["rows"]
    return orjson.loads(rows) if isinstance(rows, str) else rows  # type: ignore[no-any-return]


def cancel_document(message: Message, at: int, now: dt.datetime) -> dict[str, Any]:
    """The closing record of a scheduled message cancelled at ``at`` (ms) before it fired, written at ``now``: a row per
    recipient (one for a topic message). Written twice (collect, then dispatch's reconciler finishing a cancel it
    thought left behind) it is the same: each stage's first time counts (``derive``, ``derive_counts``)."""
    if message.topic is not None:
        rows = [{"i": message.index, "s": {"cancelled": at}}]
        return {"p": message.post, "rows": rows_text(rows), "closed": True, "at": now, "purge_at": now + PURGE_AFTER}
    return event_documents({(message.id, u): {"cancelled": at} for u in message.users}, now)[0]


def scheduled_stage(post: dict[str, Any], index: int) -> dict[str, int]:
    """``{"scheduled": due}`` for a scheduled message, else nothing."""
    due = (post.get("due") or [0] * (index + 1))[index]
    return {"scheduled": due} if due else {}


def derive(post: dict[str, Any], index: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per recipient of message ``index`` of ``post``: the state (by precedence) and each stage's first time in ms."""
    scheduled = {f"{stage}_at": at for stage, at in scheduled_stage(post, index).items()}
    rows = {u: {"user_id": u, "state": "scheduled" if scheduled else "accepted", "accepted_at": post["ts"], **scheduled}
            for u in split_users(post["users"][index])}
    for e in events:
        for r in rows_of(e):
            row = rows.get(r.get("u", "")) if r["i"] == index else None
            if row is None:
                continue
            for stage, at in r["s"].items():
                row[f"{stage}_at"] = min(at, row.get(f"{stage}_at", at))
                if PRECEDENCE[stage] > PRECEDENCE[row["state"]]:
                    row["state"] = stage
    return [rows[u] for u in sorted(rows)]


def derive_counts(post: dict[str, Any], index: int, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The status of topic message ``index`` of ``post``: its topic (or broadcast), each stage's first time in ms,
    the nodes that took it and the sockets they wrote it to."""
    topic = post["topics"][index]
    stages, nodes, sockets = {"accepted": post["ts"], **scheduled_stage(post, index)}, set(), 0
    for r in (r for e in events for r in rows_of(e) if r["i"] == index and "u" not in r):
        if "node" in r:  # else the message's own row: its cancellation
            nodes.add(r["node"])
            sockets += r["k"]
        for stage, at in r["s"].items():
            stages[stage] = min(at, stages.get(stage, at))
    head = {"broadcast": True} if topic == BROADCAST else {"topic": topic}
    return {**head, "stages": stages, "nodes": len(nodes), "sockets": sockets}


# A rebuild's pages may take far longer than a request's socket timeout (twice ``timeout_ms``): FerretDB filters and
# sorts a whole collection in its own process before the first page, slowly under load. A rebuild bounded by the
# request timeout restarted from scratch on every retry and never finished (chaos seed 1714, Redis Cluster).
BULK_READ_SECONDS = 300.0


async def bulk_page(cursor: AsyncCursor[dict[str, Any]], page: int) -> list[dict[str, Any]]:
    """The cursor's next ``page`` documents, waited for up to ``BULK_READ_SECONDS`` (pymongo's per-operation timeout,
    which overrides the client's socket timeout)."""
    with pymongo.timeout(BULK_READ_SECONDS):
        return await cursor.to_list(page)


class MessageStore:
    def __init__(self, url: str, database: str = "push", timeout_ms: int = 3000, **client_options: Any) -> None:
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms * 2,
            tz_aware=True, **client_options,
        )
        journaled = WriteConcern(**{**self.client.write_concern.document, "j": True})  # the module's docstring: why
        self.posts = self.client[database].get_collection("posts", write_concern=journaled)
        self.events = self.client[database]["events"]
        self.breaker = CircuitBreaker("mongodb", failures=(PyMongoError,), blameless=refused_by_document)

    async def prepare(self) -> None:
        """Create the indexes the off-path queries use on a real MongoDB (idempotent), TTL where supported."""

        async def create() -> None:
            await self.events.create_index([("p", 1)])
            await self.events.create_index([("closed", 1), ("at", 1)])
            await self.posts.create_index([("expires_at", 1), ("ts", 1)])
            for collection in (self.posts, self.events):
                try:
                    await collection.create_index([("purge_at", 1)], expireAfterSeconds=0)
                except OperationFailure as exc:
                    log.info("no TTL index on this server; dispatch purges old history", extra={"mongo_code": exc.code})

        await self.breaker.call(create)

    async def accept(self, messages: list[Message]) -> tuple[list[Message], list[ServiceError | None]]:
        """Insert one document per submitted post in one unordered insert, once MongoDB acknowledges.

        Returns the messages not stored before (a retried post's are, even by an earlier submission in
        this same insert), and per message the error refusing its post, or None: a post the server
        refuses is not stored and fails alone, the others are stored whole.
        """
        posts = submitted_posts(messages)
        if not posts:
            return [], []
        docs = [post_document(p) for p in posts]
        try:
            await self.breaker.call(lambda: self.posts.insert_many(docs, ordered=False))
            return outcomes(posts, [])
        except BulkWriteError as exc:  # refused_by_document: any other failure is Unavailable by now
            return outcomes(posts, exc.details["writeErrors"])

    async def record(self, stages: dict[Pair, dict[str, int]],
                     counts: Mapping[tuple[str, str], NodeCount] = MappingProxyType({})) -> None:
        """One insert: one event document per post; documents the server refuses are dropped (a retry
        would be refused again), the others are stored."""
        if stages or counts:
            docs = event_documents(stages, dt.datetime.now(dt.UTC), counts)
            try:
                await self.breaker.call(lambda: self.events.insert_many(docs, ordered=False))
            except BulkWriteError as exc:  # refused_by_document: any other failure is Unavailable by now
                log.warning("lifecycle documents refused; dropped", extra={"count": len(exc.details["writeErrors"]),
                                                                            "error": exc.details["writeErrors"][0].get("errmsg")})

    async def lifecycle(self, message_id: str, sender: str) -> dict[str, Any] | None:
        """The message's status (per recipient state and stage times; for a topic message, per stage times and
        counts), or None unless ``sender`` posted the message."""
        post, index = post_of(message_id), index_of(message_id)

        async def read() -> dict[str, Any] | None:
            doc = await self.posts.find_one({"_id": post}, {"users": 1, "ts": 1, "sender": 1, "topics": 1, "due": 1})
            if doc is None or doc["sender"] != sender or index >= len(doc["users"]):
                return None
            events = await self.events.find({"p": post}, {"rows": 1}).to_list(None)
            if (doc.get("topics") or [None] * (index + 1))[index] is not None:
                return {"id": message_id, **derive_counts(doc, index, events)}
            return {"id": message_id, "recipients": derive(doc, index, events)}

        return await self.breaker.call(read)

    async def open_messages(self, now: dt.datetime, page: int) -> AsyncIterator[list[Message]]:
        """Messages of unexpired posts, oldest post first, ``page`` posts at a time (one query, read in batches)."""
        cursor = self.posts.find({"expires_at": {"$gt": now}}, {"purge_at": 0}, batch_size=page).sort("ts", 1)
        while batch := await self.breaker.call(lambda: bulk_page(cursor, page)):
            yield [m for doc in batch for m in messages_of_document(doc)]

    async def stored_posts(self, posts: list[str]) -> list[Message]:
        """The messages of those of ``posts`` MongoDB has, read by id one at a time (an equality filter, which
        FerretDB pushes down; ``$in`` it does not)."""

        async def read() -> list[dict[str, Any]]:
            docs = await asyncio.gather(*(self.posts.find_one({"_id": p}, {"purge_at": 0}) for p in posts))
            return [d for d in docs if d is not None]

        return [m for doc in await self.breaker.call(read) for m in messages_of_document(doc)]

    async def recorded(self, message_ids: list[str]) -> dict[str, set[str]]:
        """Those of ``message_ids`` with any lifecycle row (a node's count, a delivery's stage or a cancellation), each
        with the users its rows name ("" for a row naming none: a topic or broadcast message's count or cancellation,
        the record that it fired or was cancelled). One query per post, by its id (an equality filter, which FerretDB
        pushes down)."""
        wanted = set(message_ids)
        posts = list(dict.fromkeys(post_of(m) for m in message_ids))

        async def read() -> list[list[dict[str, Any]]]:
            return list(await asyncio.gather(*(self.events.find({"p": p}, {"rows": 1, "_id": 0}).to_list(None) for p in posts)))

        found: dict[str, set[str]] = {}
        for post, docs in zip(posts, await self.breaker.call(read)):
            for r in (r for d in docs for r in rows_of(d)):
                if (m := message_id(post, r["i"])) in wanted:
                    found.setdefault(m, set()).add(r.get("u", ""))
        return found

    async def record_cancelled(self, message: Message, at: int) -> None:
        """One insert: the closing ``cancelled`` record of a scheduled message taken back at ``at`` (ms) before it
        fired. Raises if it is not stored (``Unavailable``, or the server's refusal of the document)."""
        doc = cancel_document(message, at, dt.datetime.now(dt.UTC))
        await self.breaker.call(lambda: self.events.insert_one(doc))

    async def record_cancels(self, cancels: Sequence[tuple[Message, int]]) -> set[str]:
        """One unordered insert: the ``cancelled`` records of these messages, each at its time (ms). Returns the ids of
        those whose document the server refused (the others are stored); ``Unavailable`` if MongoDB is."""
        if not cancels:
            return set()
        now = dt.datetime.now(dt.UTC)
        docs = [cancel_document(message, at, now) for message, at in cancels]
        try:
            await self.breaker.call(lambda: self.events.insert_many(docs, ordered=False))
        except BulkWriteError as exc:  # refused_by_document: any other failure is Unavailable by now
            return {cancels[e["index"]][0].id for e in exc.details["writeErrors"]}
        return set()

    async def closed_deliveries(self, since: dt.datetime, page: int) -> AsyncIterator[tuple[list[Pair], list[str]]]:
        """Deliveries recorded as acknowledged, expired or cancelled since ``since`` (no earlier record can close a
        message accepted after it), and the ids of the messages cancelled among them, ``page`` documents at a time."""
        cursor = self.events.find({"closed": True, "at": {"$gte": since}}, {"p": 1, "rows": 1, "_id": 0}, batch_size=page)
        while batch := await self.breaker.call(lambda: bulk_page(cursor, page)):
            rows = [(message_id(d["p"], r["i"]), r) for d in batch for r in rows_of(d) if any(c in r["s"] for c in CLOSING)]
            yield ([(m, r["u"]) for m, r in rows if "u" in r],
                   list(dict.fromkeys(m for m, r in rows if "cancelled" in r["s"])))

    async def purge(self, now: dt.datetime) -> int:
        """Delete history past its ``purge_at`` (where no TTL index does it); return how many documents."""

        async def purge() -> int:
            deleted = 0
            for collection in (self.events, self.posts):
                deleted += (await collection.delete_many({"purge_at": {"$lt": now}})).deleted_count
            return deleted

        return await self.breaker.call(purge)

    async def ping(self) -> bool:
        try:
            await self.breaker.call(lambda: self.client.admin.command("ping"))
            return True
        except Unavailable:
            return False

    async def close(self) -> None:
        await self.client.close()
