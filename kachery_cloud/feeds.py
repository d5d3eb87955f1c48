"""Layer 7: feeds, append-only message logs in a project that other machines follow live.

A :class:`Feed` is a handle: the feed's id and project, and this reader's position (the number of the next
message :meth:`Feed.get_next_messages` returns). Messages are dicts, numbered from 0 by the server with no gaps
however many clients append at once. Every message carries its appending client's signature, which is checked
on every read. Waiting for new messages is a long-poll: the server answers as soon as one is appended.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._connection import api_client, require_writable
from .config import ClientConfig, load_config
from .errors import IntegrityError, InvalidArgumentError, ServerUnreachableError
from .protocol.feed_format import MAX_WAIT_SEC, check_append_size, feed_uri, message_body, parse_feed_ref, signed_bytes
from .protocol.request_signing import verify_signature

_PAGE = 1000  # messages per read request (the server's limit)
_READ_TIMEOUT_MARGIN_SEC = 30.0  # on top of the long-poll's own wait
_UNREACHABLE_PAUSE_SEC = 2.0  # between attempts to reach a restarting server while waiting for messages


@dataclass(frozen=True)
class FeedMessage:
    """A stored message with what the server recorded about it. Its signature has been verified."""

    number: int
    message: dict[str, Any]
    client_id: str  # who appended it (the client whose key signed it)
    appended_at_ms: int
    signature: str


class Feed:
    """A feed of a project. Get one from :func:`create_feed` or :func:`load_feed`."""

    def __init__(self, feed_id: str, project_id: str, config: ClientConfig) -> None:
        self._feed_id = feed_id
        self._project_id = project_id
        self._config = config
        self._position = 0

    @property
    def feed_id(self) -> str:
        return self._feed_id

    @property
    def uri(self) -> str:
        """``kachery-feed://<feed id>``: give it to :func:`load_feed` anywhere."""
        return feed_uri(self._feed_id)

    @property
    def project_id(self) -> str:
        return self._project_id

    @property
    def current_message_number(self) -> int:
        """This reader's position: the number of the next message :meth:`get_next_messages` returns."""
        return self._position

    def set_position(self, position: int) -> None:
        """Make :meth:`get_next_messages` continue from message number ``position`` (0: from the start)."""
        self._position = _non_negative(position, "position")

    def __repr__(self) -> str:
        return f"Feed({self.uri!r}, project_id={self._project_id!r}, position={self._position})"

    # ------------------------------------------------------------------------------------------- writing

    def append_message(self, message: dict[str, Any]) -> int:
        """Append one message (a JSON-serializable dict); return its number."""
        return self.append_messages([message])[0]

    def append_messages(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Append messages in order, all or none, as consecutive numbers; return their numbers.

        At most 1000 messages of up to 1 MiB each (canonical JSON) and 4 MiB together per call. A retry after a
        lost answer is recognized by the server and not appended twice.
        """
        if isinstance(messages, dict) or not isinstance(messages, Sequence):
            raise InvalidArgumentError("append_messages needs a list of dicts; use append_message for one")
        bodies = [message_body(m) for m in messages]
        check_append_size(bodies)
        if not bodies:
            return []
        require_writable(self._config, "append_messages")
        api = api_client(self._config)
        assert api.identity is not None  # not ephemeral, so the client has a key
        body = {
            "append_id": secrets.token_hex(16),
            "messages": [{"body": b, "signature": api.identity.sign(signed_bytes(self._feed_id, b))} for b in bodies],
        }
        answer = api.call("POST", f"/api/feeds/{self._feed_id}/messages", json_body=body, idempotent=True)
        first = int(answer["first_number"])
        return list(range(first, first + len(bodies)))

    # ------------------------------------------------------------------------------------------- reading

    def get_num_messages(self) -> int:
        """How many messages the feed has now."""
        return int(_feed_info(self._config, self._feed_id)["num_messages"])

    def get_next_messages(self, timeout_sec: float = 0, *, max_messages: int | None = None) -> list[dict[str, Any]]:
        """The messages after this reader's position (at most ``max_messages``), advancing the position past them.

        If there are none yet, wait up to ``timeout_sec`` for one: the call returns as soon as any client appends
        (a long-poll on the server, not a sleep loop), or returns ``[]`` when the time is up.
        """
        return [r.message for r in self.get_next_message_records(timeout_sec, max_messages=max_messages)]

    def get_next_message_records(self, timeout_sec: float = 0, *, max_messages: int | None = None) -> list[FeedMessage]:
        """Like :meth:`get_next_messages`, with each message's number, appending client, time and signature."""
        if not isinstance(timeout_sec, int | float) or isinstance(timeout_sec, bool) or timeout_sec < 0:
            raise InvalidArgumentError(f"timeout_sec must be a number >= 0, not {timeout_sec!r}")
        if max_messages is not None:
            max_messages = _non_negative(max_messages, "max_messages")
            if max_messages == 0:
                return []
        deadline = time.monotonic() + timeout_sec
        # Wait for the first page; a server that restarts meanwhile is asked again until the deadline.
        while True:
            remaining = deadline - time.monotonic()
            try:
                page, num_messages = self._read_page(self._position, _limit(max_messages, 0), remaining)
            except ServerUnreachableError:
                if deadline - time.monotonic() <= 0:
                    raise
                time.sleep(min(_UNREACHABLE_PAUSE_SEC, max(0.0, deadline - time.monotonic())))
                continue
            if page or deadline - time.monotonic() <= 0:
                break
        records = page + self._pages_after(page, num_messages, max_messages)
        if records:  # only now: an error in a later page must not skip messages nobody received
            self._position = records[-1].number + 1
        return records

    def get_messages(self, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
        """Messages number ``start`` up to (not including) ``end``, or to the last one if ``end`` is None; like a
        slice, only those that exist. The reader's position does not change."""
        return [r.message for r in self.get_message_records(start, end)]

    def get_message_records(self, start: int = 0, end: int | None = None) -> list[FeedMessage]:
        """Like :meth:`get_messages`, with each message's number, appending client, time and signature."""
        start = _non_negative(start, "start")
        wanted = None if end is None else _non_negative(end, "end") - start
        if wanted is not None and wanted <= 0:
            return []
        page, num_messages = self._read_page(start, _limit(wanted, 0), 0.0)
        return page + self._pages_after(page, num_messages, wanted)

    def _pages_after(self, page: list[FeedMessage], num_messages: int, wanted: int | None) -> list[FeedMessage]:
        """The messages after ``page``, read without waiting, to the feed's end or to ``wanted`` messages in all."""
        records = list(page)
        while records and records[-1].number + 1 < num_messages and (wanted is None or len(records) < wanted):
            more, num_messages = self._read_page(records[-1].number + 1, _limit(wanted, len(records)), 0.0)
            if not more:
                break
            records.extend(more)
        return records[len(page) :]

    def _read_page(self, start: int, limit: int, wait_sec: float) -> tuple[list[FeedMessage], int]:
        wait_sec = min(max(wait_sec, 0.0), MAX_WAIT_SEC)
        answer = api_client(self._config).call(
            "GET",
            f"/api/feeds/{self._feed_id}/messages",
            params={"start": start, "limit": limit, "wait_ms": int(wait_sec * 1000)},
            timeout=(10.0, wait_sec + _READ_TIMEOUT_MARGIN_SEC),
        )
        records = [self._verified(item, start + i) for i, item in enumerate(answer["messages"])]
        return records, int(answer["num_messages"])

    def _verified(self, item: dict[str, Any], expected_number: int) -> FeedMessage:
        number, body, client_id, signature = item["number"], item["body"], item["client_id"], item["signature"]
        if number != expected_number:
            raise IntegrityError(
                f"feed {self._feed_id}: the server sent message {number} where {expected_number} was expected"
            )
        if not verify_signature(client_id, signed_bytes(self._feed_id, body), signature):
            raise IntegrityError(
                f"feed {self._feed_id}: message {number} does not carry a valid signature of client {client_id}; "
                "it was altered after it was appended"
            )
        return FeedMessage(
            number=number,
            message=json.loads(body),
            client_id=client_id,
            appended_at_ms=int(item["appended_at_ms"]),
            signature=signature,
        )


def create_feed(project_id: str | None = None) -> Feed:
    """A new, empty feed in ``project_id`` (default: ``KACHERY_CLOUD_PROJECT``, else your default project)."""
    config = load_config()
    require_writable(config, "create_feed")
    body = {"project_id": project_id or config.project} if (project_id or config.project) else {}
    answer = api_client(config).call("POST", "/api/feeds", json_body=body)
    return Feed(answer["feed_id"], answer["project_id"], config)


def load_feed(uri_or_id: str) -> Feed:
    """The feed ``kachery-feed://<feed id>`` (or its bare id), read from its first message on. Needs read access to
    its project: anyone, for a public project (ephemeral clients too)."""
    feed_id = parse_feed_ref(uri_or_id)
    config = load_config()
    info = _feed_info(config, feed_id)
    return Feed(feed_id, info["project_id"], config)


def _feed_info(config: ClientConfig, feed_id: str) -> dict[str, Any]:
    return api_client(config).call("GET", f"/api/feeds/{feed_id}")


def _limit(wanted: int | None, have: int) -> int:
    """Messages to ask for in the next page."""
    return _PAGE if wanted is None else max(1, min(_PAGE, wanted - have))


def _non_negative(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgumentError(f"{name} must be an int >= 0, not {value!r}")
    return value
