"""Server layer 5: feeds, the append-only message logs of projects.

- Creating and appending need the ``write`` role in the feed's project; reading needs read access (anyone,
  on a public project). Nothing in the API modifies or deletes a message. A feed of a private project is
  answered to a non-member as a feed that does not exist.
- Messages (body and signature) count against the project's quota: an append that does not fit is refused.
- Message numbers are consecutive from 0: an append locks the feed's row, raises ``num_messages`` by the
  number of messages and inserts them, in one transaction; the primary key (feed, number) refuses duplicates.
  So numbering holds however many clients, processes or server replicas append at once.
- Every message is stored as the canonical JSON its appending client signed, with that client's signature
  (checked here, so a stored message always verifies), the client id and the time.
- An append carries an ``append_id`` chosen by the client: a retried append (the first answer was lost) finds
  its messages already there and is not applied twice.
- Reading is a long-poll: with ``wait_ms``, a read that finds nothing new waits until an append wakes it
  (:mod:`api_server.wakeups`) or the wait ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from kachery_cloud.errors import KacheryCloudError
from kachery_cloud.protocol.feed_format import (
    FEED_ID_RE,
    MAX_APPEND_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_MESSAGES_PER_APPEND,
    feed_uri,
    new_feed_id,
    signed_bytes,
)
from kachery_cloud.protocol.request_signing import verify_signature
from kachery_cloud.protocol.serialization import canonical_json_bytes

from ..auth import Caller
from ..db.models import Feed, FeedMessage, now_ms
from ..db.session import Database
from ..errors import ClientNotRegistered, Conflict, InvalidRequest, NotFound
from ..wakeups import Wakeups
from . import projects
from .usage import add_usage, charge_or_refuse

MAX_READ_MESSAGES = 1000
MAX_READ_BYTES = 4 << 20  # a page stops after this many bytes of messages (it always holds at least one)
_READ_CHUNK = 64  # rows fetched from the database at a time while filling a page


def topic(feed_id: str) -> str:
    return f"feed:{feed_id}"


class FeedService:
    def __init__(self, db: Database, wakeups: Wakeups) -> None:
        self.db = db
        self.wakeups = wakeups

    def create(self, caller: Caller, project_id: str | None) -> dict[str, Any]:
        with self.db.transaction() as session:
            project = projects.caller_project(session, caller, project_id, "write")
            feed = Feed(id=new_feed_id(), project_id=project.id, num_messages=0, created_by_client_id=caller.client_id)
            session.add(feed)
            session.flush()
            add_usage(session, project.id, requests=1)
            return _describe(feed)

    def info(self, caller: Caller, feed_id: str) -> dict[str, Any]:
        with self.db.read() as session:
            feed = _readable_feed(session, caller, feed_id)
            add_usage(session, feed.project_id, requests=1)
            return _describe(feed)

    def append(self, caller: Caller, feed_id: str, append_id: str, messages: list[tuple[str, str]]) -> dict[str, Any]:
        """Append ``messages`` (canonical JSON, signature) in order; returns the number of the first."""
        if not messages:
            raise InvalidRequest("an append needs at least one message")
        if len(messages) > MAX_MESSAGES_PER_APPEND:
            raise InvalidRequest(
                f"at most {MAX_MESSAGES_PER_APPEND} messages per append ({len(messages)} given)",
                error_code="too_many_messages",
            )
        if sum(len(body) for body, _ in messages) > MAX_APPEND_BYTES:
            raise InvalidRequest(f"one append may carry at most {MAX_APPEND_BYTES} bytes of messages",
                                 error_code="append_too_large")  # fmt: skip
        _check_feed_id(feed_id)
        assert caller.client_id is not None  # the route requires a registered caller
        for index, (body, signature) in enumerate(messages):
            _check_message(feed_id, index, body, signature, caller.client_id)
        with self.db.transaction() as session:
            # The feed's row, locked (PostgreSQL; SQLite transactions are serial) before looking for the append
            # id, so a retry racing its own first attempt waits for it and then finds it.
            feed = _get_feed(session, feed_id, lock=True)
            _require_role(session, feed, caller, "write")
            earlier = session.scalars(
                select(FeedMessage.number).where(FeedMessage.feed_id == feed_id, FeedMessage.append_id == append_id)
            ).one_or_none()
            if earlier is not None:
                _check_same_append(session, feed_id, earlier, messages, caller.client_id)
                add_usage(session, feed.project_id, requests=1)
                return {"feed_id": feed_id, "first_number": earlier, "count": len(messages), "repeated": True}
            # Charged first: an append over the project's quota changes nothing (PostgreSQL: the feed row is locked
            # before the project's, in every append, so appenders cannot deadlock).
            size = sum(len(body.encode("utf-8")) + len(signature) for body, signature in messages)
            charge_or_refuse(session, feed.project_id, size, f"{len(messages)} feed message(s)")
            end = session.scalars(
                update(Feed)
                .where(Feed.id == feed_id)
                .values(num_messages=Feed.num_messages + len(messages))
                .returning(Feed.num_messages)
            ).one()
            first = end - len(messages)
            appended_at = now_ms()
            session.add_all(
                FeedMessage(
                    feed_id=feed_id,
                    number=first + index,
                    body=body,
                    client_id=caller.client_id,
                    signature=signature,
                    appended_at_ms=appended_at,
                    append_id=append_id if index == 0 else None,
                )
                for index, (body, signature) in enumerate(messages)
            )
            add_usage(session, feed.project_id, requests=1)
            self.wakeups.publish_in(session, topic(feed_id))
        self.wakeups.wake(topic(feed_id))
        return {"feed_id": feed_id, "first_number": first, "count": len(messages), "repeated": False}

    async def read(self, caller: Caller, feed_id: str, start: int, limit: int, wait_ms: int) -> dict[str, Any]:
        """Messages from number ``start`` on (at most ``limit``); if there are none yet, wait up to ``wait_ms``
        for an append."""
        _check_feed_id(feed_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        first = True
        with self.wakeups.subscription(topic(feed_id)) as woken:
            while True:
                woken.clear()
                page = await run_in_threadpool(self._read_page, caller, feed_id, start, limit, first)
                first = False
                remaining = deadline - loop.time()
                if page["messages"] or remaining <= 0 or self.wakeups.closing:
                    return page
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), remaining)

    def _read_page(self, caller: Caller, feed_id: str, start: int, limit: int, count: bool) -> dict[str, Any]:
        limit = max(1, min(limit, MAX_READ_MESSAGES))
        messages: list[dict[str, Any]] = []
        with self.db.read() as session:
            feed = _readable_feed(session, caller, feed_id)
            if start < feed.num_messages:
                query = (
                    select(FeedMessage)
                    .where(FeedMessage.feed_id == feed_id, FeedMessage.number >= start)
                    .order_by(FeedMessage.number)
                    .limit(limit)
                    .execution_options(yield_per=_READ_CHUNK)  # stop fetching once the page is full
                )
                rows = session.scalars(query)
                size = 0
                for row in rows:
                    size += len(row.body)
                    if messages and size > MAX_READ_BYTES:
                        break
                    messages.append(_stored(row))
                rows.close()
            if count:
                add_usage(session, feed.project_id, requests=1)
        return {"feed_id": feed_id, "start": start, "num_messages": feed.num_messages, "messages": messages}


def _check_feed_id(feed_id: str) -> None:
    if not FEED_ID_RE.match(feed_id):
        raise InvalidRequest(f"invalid feed id {feed_id[:80]!r}: expected 32 lowercase hex digits")


def _get_feed(session: Session, feed_id: str, *, lock: bool = False) -> Feed:
    feed = session.get(Feed, feed_id, with_for_update=lock)
    if feed is None:
        raise _feed_not_found(feed_id)
    return feed


def _feed_not_found(feed_id: str) -> NotFound:
    return NotFound(f"feed {feed_id} does not exist", error_code="feed_not_found")


def _readable_feed(session: Session, caller: Caller, feed_id: str) -> Feed:
    try:
        feed = _get_feed(session, feed_id)
    except NotFound:
        _refuse_unregistered(caller)
        raise
    _require_role(session, feed, caller, "read")
    return feed


def _require_role(session: Session, feed: Feed, caller: Caller, needed: str) -> None:
    """The caller may act on ``feed`` with role ``needed``. A feed of a private project the caller cannot see is
    answered as a feed that does not exist; to a client that is not registered, both are "register first"."""
    try:
        projects.require_role(session, feed.project_id, caller.user, needed)
    except NotFound:
        _refuse_unregistered(caller)
        raise _feed_not_found(feed.id) from None


def _refuse_unregistered(caller: Caller) -> None:
    if caller.client_id is not None and caller.user is None:
        raise ClientNotRegistered(
            f"client {caller.client_id} is not registered with this server; run kachery-cloud-init"
        )


def _check_same_append(
    session: Session, feed_id: str, first: int, messages: list[tuple[str, str]], client_id: str
) -> None:
    """A repeated append id must come with the very messages, from the very client, that it first appended;
    otherwise the caller would be told its messages are at numbers that hold others."""
    stored = session.execute(
        select(FeedMessage.body, FeedMessage.client_id)
        .where(FeedMessage.feed_id == feed_id, FeedMessage.number >= first, FeedMessage.number < first + len(messages))
        .order_by(FeedMessage.number)
    ).all()
    if [(body, client_id) for body, _ in messages] != [tuple(row) for row in stored]:
        raise Conflict(
            f"append id already used for other messages in feed {feed_id}; use a new random append_id per append",
            error_code="append_id_reused",
        )


def _stored(row: FeedMessage) -> dict[str, Any]:
    return {
        "number": row.number,
        "body": row.body,
        "client_id": row.client_id,
        "signature": row.signature,
        "appended_at_ms": row.appended_at_ms,
    }


def _check_message(feed_id: str, index: int, body: str, signature: str, client_id: str) -> None:
    """Each message must be a canonical-JSON object, within the size limit, signed by the appending client."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise InvalidRequest(f"message {index} is over {MAX_MESSAGE_BYTES} bytes", error_code="message_too_large")
    try:
        value = json.loads(body)
        canonical = canonical_json_bytes(value).decode("ascii")
    except RecursionError:
        raise InvalidRequest(f"message {index} is nested too deeply", error_code="invalid_message") from None
    except (ValueError, KacheryCloudError) as e:
        reason = "is nested too deeply" if "deep" in str(e) else "is not valid JSON"
        raise InvalidRequest(f"message {index} {reason}", error_code="invalid_message") from None
    if not isinstance(value, dict) or canonical != body:
        raise InvalidRequest(
            f"message {index} must be a JSON object in canonical form (sorted keys, no spaces, ASCII)",
            error_code="invalid_message",
        )
    if not verify_signature(client_id, signed_bytes(feed_id, body), signature):
        raise InvalidRequest(
            f"message {index} is not signed by the appending client {client_id}", error_code="bad_message_signature"
        )


def _describe(feed: Feed) -> dict[str, Any]:
    return {
        "feed_id": feed.id,
        "uri": feed_uri(feed.id),
        "project_id": feed.project_id,
        "num_messages": feed.num_messages,
        "created_by_client_id": feed.created_by_client_id,
        "created_at_ms": feed.created_at_ms,
    }
