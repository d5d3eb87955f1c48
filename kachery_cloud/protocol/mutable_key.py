"""Layer 2: the grammar of mutable keys and the limits on values, shared by local and cloud mutables (and by the
API server, which checks the same rules).

A key is ``/``-separated segments: every segment but the last names a folder and starts with ``@``, the
last names the value and does not. ``@lab/@exp1/latest`` is a key, ``@lab/@exp1`` a folder key. Because
folders and values can never share a name, a value and a folder never collide on disk or in a database.
Segments may not be empty, ``.`` or ``..``, start with ``.`` (reserved for temporary files), contain NUL
or control characters, or exceed 255 bytes of UTF-8; a whole key may not exceed 1024 bytes. Values are strings;
project mutables (on the API server) hold at most 1 MiB of UTF-8.

Keys that look alike are one key, or refused: a key is normalized to Unicode NFC (``café`` typed with a combining
accent is the same key as with the precomposed ``é``), and format characters (zero-width spaces and joiners,
bidirectional controls such as U+202E, the byte order mark, the soft hyphen) and line or paragraph separators
are refused, since they are invisible or reorder what is shown. Letters of different scripts stay different
keys (Cyrillic ``\u0430`` is not Latin ``a``), as they are in file names and URLs.
"""

from __future__ import annotations

import unicodedata

from ..errors import InvalidArgumentError, InvalidMutableKeyError

_MAX_SEGMENT_BYTES = 255
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1 << 20


class MutableValueTooLargeError(InvalidArgumentError):
    """A mutable value over the size limit (the server answers it with its own error code)."""


def encode_mutable_value(value: str, *, max_bytes: int | None = MAX_VALUE_BYTES) -> bytes:
    """The UTF-8 bytes of a mutable value; raises :class:`InvalidArgumentError` for a non-str, a str that is not
    valid Unicode (lone surrogates) or one over ``max_bytes`` (None: no limit, for local mutables)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"a mutable value must be a str, not {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgumentError(f"a mutable value must be valid Unicode: {e.reason} at position {e.start}") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise MutableValueTooLargeError(
            f"a mutable value may be at most {max_bytes} bytes of UTF-8; this one is {len(data)}. "
            "Store large content with store_text/store_json and set the mutable to its URI"
        )
    return data


def mutable_key(key: str) -> str:
    """``key`` in its one form (NFC), checked; raises :class:`InvalidMutableKeyError` saying what is wrong."""
    return "/".join(validate_mutable_key(key))


def folder_key(key: str) -> str:
    """A folder key in its one form (NFC), checked."""
    return "/".join(validate_folder_key(key))


def validate_mutable_key(key: str) -> list[str]:
    """Check ``key`` and return its segments, in NFC; raise :class:`InvalidMutableKeyError` saying what is wrong."""
    segments = _segments(key, what="mutable key")
    for segment in segments[:-1]:
        if not segment.startswith("@"):
            suggestion = "/".join(s if s.startswith("@") else "@" + s for s in segments[:-1]) + "/" + segments[-1]
            raise InvalidMutableKeyError(
                f"invalid mutable key {key!r}: folder segment {segment!r} must start with '@' "
                f"(for example {suggestion!r})"
            )
    if segments[-1].startswith("@"):
        raise InvalidMutableKeyError(
            f"invalid mutable key {key!r}: the last segment {segments[-1]!r} names a value and must not start "
            "with '@' (a key ending in an '@' segment is a folder)"
        )
    return segments


def validate_folder_key(key: str) -> list[str]:
    """Check a folder key (every segment starts with ``@``) and return its segments, in NFC."""
    segments = _segments(key, what="mutable folder key")
    for segment in segments:
        if not segment.startswith("@"):
            raise InvalidMutableKeyError(
                f"invalid mutable folder key {key!r}: every segment must start with '@', {segment!r} does not"
            )
    return segments


def _segments(key: str, *, what: str) -> list[str]:
    if not isinstance(key, str):
        raise InvalidMutableKeyError(f"a {what} must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidMutableKeyError(f"a {what} must not be empty")
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in key):  # lone surrogates: refused below, as they are
        key = unicodedata.normalize("NFC", key)
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidMutableKeyError(f"a {what} may be at most {MAX_KEY_BYTES} bytes of UTF-8: {key[:40]!r}...")
    segments = key.split("/")
    for segment in segments:
        problem = _segment_problem(segment)
        if problem:
            raise InvalidMutableKeyError(f"invalid {what} {key!r}: {problem}")
    return segments


def _segment_problem(segment: str) -> str | None:
    if segment == "":
        return "empty segment (leading, trailing or doubled '/')"
    if segment in (".", ".."):
        return f"segment {segment!r} is not allowed"
    if segment.startswith("."):
        return f"segment {segment!r} starts with '.', which is reserved"
    if segment == "@":
        return "a folder segment needs a name after '@'"
    if any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in segment):  # C0, DEL and C1 (U+009B drives terminals)
        return f"segment {segment!r} contains a control character"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in segment):
        return f"segment {segment!r} is not valid Unicode (lone surrogate)"
    invisible = next((c for c in segment if unicodedata.category(c) in ("Cf", "Zl", "Zp")), None)
    if invisible is not None:
        name = unicodedata.name(invisible, "a format character")
        return (
            f"segment {segment!r} contains U+{ord(invisible):04X} ({name}), an invisible or bidirectional "
            "character that would make look-alike keys"
        )
    if len(segment.encode("utf-8")) > _MAX_SEGMENT_BYTES:
        return f"segment {segment[:20]!r}... is longer than {_MAX_SEGMENT_BYTES} bytes"
    return None
