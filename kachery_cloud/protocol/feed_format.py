"""Layer 2: what a feed is on the wire, shared by the client and the API server (pure, no I/O).

- A feed id is 32 lowercase hex digits; its URI is ``kachery-feed://<feed id>``.
- A message is a JSON object. It travels and is stored as its canonical JSON (the same canonical form as
  ``store_json``), exactly the text its appending client signed.
- The signature is Ed25519, by the appending client's key, over :func:`signed_bytes`: a version tag, the feed
  id and the canonical JSON, so a signed message cannot be moved to another feed or confused with a signed
  request.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from ..errors import InvalidArgumentError, InvalidURIError
from .serialization import canonical_json_bytes

URI_SCHEME = "kachery-feed"
FEED_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
SIGNED_MESSAGE_TAG = "kachery-cloud-feed-message-v1"

MAX_MESSAGE_BYTES = 1 << 20  # canonical JSON of one message
MAX_MESSAGES_PER_APPEND = 1000
MAX_APPEND_BYTES = 4 << 20  # all messages of one append together
MAX_WAIT_SEC = 30  # the longest one long-poll request waits on the server; clients ask again for longer waits


def new_feed_id() -> str:
    return secrets.token_hex(16)


def feed_uri(feed_id: str) -> str:
    return f"{URI_SCHEME}://{feed_id}"


def parse_feed_ref(uri_or_id: str) -> str:
    """The feed id in ``kachery-feed://<id>`` or a bare id; raises :class:`InvalidURIError` otherwise."""
    if not isinstance(uri_or_id, str):
        raise InvalidURIError(f"a feed URI must be a str, not {type(uri_or_id).__name__}")
    text = uri_or_id.strip()
    scheme, sep, rest = text.partition("://")
    feed_id = rest.rstrip("/") if sep else text
    if sep and scheme != URI_SCHEME:
        raise InvalidURIError(f"not a feed URI: {uri_or_id!r} (expected {URI_SCHEME}://<32 hex digits>)")
    if not FEED_ID_RE.match(feed_id):
        raise InvalidURIError(f"not a feed URI or feed id: {uri_or_id!r} (expected {URI_SCHEME}://<32 hex digits>)")
    return feed_id


def message_body(message: Any) -> str:
    """The canonical JSON text of ``message`` (a dict); raises for anything else or for an oversized message."""
    if not isinstance(message, dict):
        raise InvalidArgumentError(f"a feed message must be a dict (a JSON object), not {type(message).__name__}")
    body = canonical_json_bytes(message)
    if len(body) > MAX_MESSAGE_BYTES:
        raise InvalidArgumentError(
            f"a feed message may be at most {MAX_MESSAGE_BYTES} bytes of canonical JSON (1 MiB); this one is "
            f"{len(body)}. Store large content with store_json and append its URI instead"
        )
    return body.decode("ascii")


def check_append_size(bodies: list[str]) -> None:
    """Refuse an append of more messages, or more bytes, than one request may carry."""
    if len(bodies) > MAX_MESSAGES_PER_APPEND:
        raise InvalidArgumentError(
            f"at most {MAX_MESSAGES_PER_APPEND} messages may be appended at once ({len(bodies)} given); "
            "append them in several calls"
        )
    total = sum(len(b) for b in bodies)
    if total > MAX_APPEND_BYTES:
        raise InvalidArgumentError(
            f"one append may carry at most {MAX_APPEND_BYTES} bytes of messages (4 MiB); these are {total} bytes. "
            "Append them in several calls"
        )


def signed_bytes(feed_id: str, body: str) -> bytes:
    """The bytes the appending client signs for the message ``body`` (canonical JSON) of feed ``feed_id``."""
    return f"{SIGNED_MESSAGE_TAG}\n{feed_id}\n{body}".encode()
