"""Layer 2: content URIs. ``sha1://<40 lowercase hex>?label=<url-quoted label>``.

Parsing tolerates query parameters other than ``label`` (they are kept) and the legacy kachery-p2p form
``sha1://<hash>/<file name>``; anything else malformed raises :class:`InvalidURIError` saying what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote

from ..errors import InvalidArgumentError, InvalidURIError

SCHEME = "sha1"
_SHA1_RE = re.compile(r"[0-9a-f]{40}")
_ANY_CASE_HEX_RE = re.compile(r"[0-9a-fA-F]{40}")


@dataclass(frozen=True)
class ContentURI:
    """A parsed content URI."""

    sha1: str
    label: str | None = None
    query: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return format_uri(self.sha1, self.label)


def is_sha1_hex(value: str) -> bool:
    """Whether ``value`` is a SHA-1 in the canonical form (40 lowercase hex digits)."""
    return _SHA1_RE.fullmatch(value) is not None


def check_label(label: object) -> None:
    """Refuse a label that is not text a URI can carry (InvalidArgumentError); called before anything is stored."""
    if label is None:
        return
    if not isinstance(label, str):
        raise InvalidArgumentError(f"a label must be a str, not {type(label).__name__}")
    if _has_lone_surrogate(label):
        raise InvalidArgumentError(f"the label {label[:40]!r} is not valid Unicode text (lone surrogate)")


def _has_lone_surrogate(text: str) -> bool:
    # Valid in a Python str (and in JSON), not in UTF-8: such text cannot be quoted into a URI or stored.
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def format_uri(sha1: str, label: str | None = None) -> str:
    """The URI of content with hash ``sha1``; the label is URL-quoted and never changes the hash."""
    if not is_sha1_hex(sha1):
        raise InvalidURIError(f"not a SHA-1 hash (40 lowercase hex digits): {sha1!r}")
    check_label(label)
    if label is None:
        return f"{SCHEME}://{sha1}"
    # quote() with its default safe='/' is what kachery-cloud used, so labels produce identical URIs.
    return f"{SCHEME}://{sha1}?label={quote(label)}"


def parse_uri(uri: str) -> ContentURI:
    """Parse a content URI, raising :class:`InvalidURIError` with the reason if it is malformed."""
    if not isinstance(uri, str):
        raise InvalidURIError(f"a URI must be a str, not {type(uri).__name__}")
    text = uri.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise InvalidURIError(f"not a URI: {uri!r} (expected sha1://<40 hex digits>)")
    if scheme != SCHEME:
        raise InvalidURIError(f"unsupported URI scheme {scheme!r} in {uri!r}; only sha1:// URIs are supported")
    location, _, query_text = rest.partition("?")
    hash_part = location.split("/", 1)[0]
    if not is_sha1_hex(hash_part):
        if _ANY_CASE_HEX_RE.fullmatch(hash_part):
            raise InvalidURIError(f"the hash in {uri!r} must be lowercase: sha1://{hash_part.lower()}")
        raise InvalidURIError(
            f"the hash in {uri!r} is not a SHA-1 ({len(hash_part)} characters {hash_part!r}; "
            "expected 40 lowercase hex digits)"
        )
    query: dict[str, str] = {}
    try:
        for key, value in parse_qsl(query_text, keep_blank_values=True, strict_parsing=False):
            query.setdefault(key, value)
    except ValueError as e:
        raise InvalidURIError(f"malformed query in {uri!r}: {e}") from None
    if any(_has_lone_surrogate(value) for value in query.values()):
        raise InvalidURIError(f"the query of {uri!r} is not valid Unicode text (lone surrogate)")
    return ContentURI(sha1=hash_part, label=query.get("label"), query=query)
