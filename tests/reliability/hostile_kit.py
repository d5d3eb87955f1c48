"""Shared by the hostile-input tests (test_hostile_*.py; issue 8, item 6): the pieces of text an attacker would
try, hypothesis strategies built from them, and an independent oracle for canonical JSON.

Labels, keys and URIs carrying ``..``, absolute paths, NUL, backslashes, RTL / zero-width / combining characters,
lone surrogates and very long strings must either be refused with the documented error class
(``kachery_cloud.errors``, doc/errors.md) or be handled, and never put a byte outside its place: in the client
directory (``sha1/aa/bb/cc/<h>``, ``mutables/<key>`` ...), in the bucket (``projects/<p>/sha1/...``,
``projects/<p>/packs/...``) or in the server's data directory. Example counts are small in CI and ten times larger
under ``--soak``.
"""

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kachery_cloud.protocol.uri import format_uri

SOAK_FACTOR = 10

# ------------------------------------------------------------------------------------------------ strategies

# Pieces an attacker (or an unlucky file name) would try: traversal, absolute paths, separators of every
# platform, URL-encoded traversal, NUL and other controls, bidi overrides, zero-width and combining characters,
# look-alikes of '.' and '/', characters outside the BMP, noncharacters.
TEXT_PIECES: list[str] = [
    "..", ".", "/", "//", "\\", "..\\..\\", "../", "/..", "\x00", "/etc/passwd", "../../../../../../tmp/escaped",
    "~", "~root", "$HOME", "C:\\Windows\\", "\\\\server\\share", "%2e%2e%2f", "%2F", "%00", "?", "#", "&", "=", "+",
    "%", ";", "\n", "\r\n", "\t", "\x7f", "\x1b[31m", "\x85", "\x9b", "\u2028", "\u202e", "\u200f", "\u200b",
    "\u200d", "\ufeff", "\u0301", "e\u0301", "\u00e9", "\u2215", "\u2044", "\uff0e\uff0e\uff0f", "\u2024\u2024",
    "\U0001f600", "\U000e0041", "\ufffd", "\uffff", "\U0010ffff", "@", "@..", " ", "\u00a0",
]  # fmt: skip
SURROGATE_PIECES: list[str] = ["\ud800", "\udfff", "\udc80", "a\udcffb"]

ANY_CHAR = st.characters(exclude_categories=())  # every code point: lone surrogates and controls included
TEXT_CHAR = st.characters(exclude_categories=("Cs",))  # every code point that UTF-8 can carry
SHA1S = st.text("0123456789abcdef", min_size=40, max_size=40)


def hostile(chars: st.SearchStrategy[str], *, surrogates: bool = False, max_pieces: int = 6) -> st.SearchStrategy[str]:
    """Strings glued together from hostile pieces and random characters (at most ``max_pieces`` of them)."""
    pieces = TEXT_PIECES + (SURROGATE_PIECES if surrogates else [])
    return st.lists(st.one_of(st.sampled_from(pieces), st.text(chars, max_size=6)), max_size=max_pieces).map("".join)


def hostile_or_long(chars: st.SearchStrategy[str], *, surrogates: bool = False) -> st.SearchStrategy[str]:
    return st.one_of(hostile(chars, surrogates=surrogates), st.text(chars, min_size=256, max_size=1500))


# Labels without lone surrogates: those have their own test below (they crash format_uri).
LABELS = st.none() | hostile_or_long(TEXT_CHAR)


def hostile_keys(chars: st.SearchStrategy[str], *, surrogates: bool = False) -> st.SearchStrategy[str]:
    """Keys: random text, and '/'-joined segments that are hostile, with or without the '@' of a folder."""
    segment = hostile(chars, surrogates=surrogates)
    maybe_folder = st.one_of(segment, segment.map(lambda s: "@" + s))
    return st.one_of(
        st.text(chars, max_size=30),
        st.lists(maybe_folder, min_size=1, max_size=5).map("/".join),
        st.builds(lambda folders, last: "/".join([*folders, last]), st.lists(segment.map("@".__add__), max_size=4),
                  segment),
        st.sampled_from(["/@abs/x", "@lab/../x", "@lab/./x", "@lab//x", "@lab/x/", "@lab\\..\\x", "@../x",
                         "@lab/.hidden", "@lab/x\x00y", "@" * 2000 + "/x", "@a/" * 400 + "x", "\u202e@lab/x"]),
    )  # fmt: skip


def plausible_segment(text: str) -> str:
    """``text`` made into a segment the grammar accepts, keeping whatever hostile content the grammar allows
    (backslashes, '..' inside a name, bidi and zero-width characters, look-alikes of '.' and '/')."""
    kept = "".join(c for c in text if c != "/" and ord(c) >= 32 and ord(c) != 127 and not 0xD800 <= ord(c) <= 0xDFFF)
    kept = kept.lstrip(".")
    while len(kept.encode("utf-8")) > 200:  # below the length bug tested on its own
        kept = kept[:-1]
    return kept if kept not in ("", "@") else "x"


def plausible_keys(chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Keys that pass the grammar although they look dangerous: each must stay one file or row, not a path."""
    segment = hostile(chars).map(plausible_segment)
    folder = segment.map(lambda s: s if s.startswith("@") else "@" + s)
    last = segment.map(lambda s: s if not s.startswith("@") else "v" + s)
    return st.builds(lambda folders, name: "/".join([*folders, name]), st.lists(folder, max_size=4), last)


def any_keys() -> st.SearchStrategy[str]:
    """Half plausible keys, half hostile ones (flatmap, so that hypothesis does not flatten the choice into the
    branches of hostile_keys and draw plausible keys only one time in five)."""
    return st.booleans().flatmap(
        lambda plausible: plausible_keys(ANY_CHAR) if plausible else hostile_keys(ANY_CHAR, surrogates=True)
    )


def fuzz(soak: bool, examples: int, *strategies: st.SearchStrategy[Any]) -> Callable[[Callable[..., None]], Any]:
    """Make ``check`` a hypothesis property run ``examples`` times (ten times as many under ``--soak``).

    Settings are applied here, inside the test, because they depend on the ``soak`` fixture. No example database:
    the run must not write files into the repository.
    """

    def decorate(check: Callable[..., None]) -> Any:
        return settings(
            max_examples=examples * (SOAK_FACTOR if soak else 1),
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
        )(given(*strategies)(check))

    return decorate


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def integral_floats_as_ints(x: Any) -> Any:
    """The documented rule, applied independently of the product code: floats with an integral value are ints."""
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, dict):
        return {k: integral_floats_as_ints(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [integral_floats_as_ints(v) for v in x]
    return x


def oracle(x: Any) -> bytes:
    """Canonical JSON by the standard library, for values with str keys: DESIGN.md §4's rules."""
    return json.dumps(
        integral_floats_as_ints(x), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def uri_texts() -> st.SearchStrategy[str]:
    """Text that is a URI, nearly one, or nothing like one."""
    valid = st.builds(format_uri, SHA1S, st.none() | hostile(TEXT_CHAR))
    near_hex = st.text("0123456789abcdefABCDEFgx", min_size=38, max_size=42)

    def insert(uri: str, at: int, junk: str) -> str:
        at %= len(uri) + 1
        return uri[:at] + junk + uri[at:]

    return st.one_of(
        st.text(ANY_CHAR, max_size=80),
        hostile(ANY_CHAR, surrogates=True),
        st.builds(lambda h, rest: f"sha1://{h}{rest}", SHA1S | near_hex, hostile(ANY_CHAR, surrogates=True)),
        st.builds(lambda h, q: f"sha1://{h}?{q}", SHA1S, hostile(ANY_CHAR, surrogates=True)),
        st.builds(insert, valid, st.integers(0, 200), hostile(ANY_CHAR, surrogates=True)),
        st.builds(lambda s, h: f"{s}{h}", st.sampled_from(["SHA1://", "sha1:/", "sha1:", "sha256://", "file://",
                                                              "http://", " sha1://", "sha1://\x00", "sha1:///"]),
                  SHA1S),
        st.builds(lambda h, name: f"sha1://{h}/{name}", SHA1S, hostile(ANY_CHAR, surrogates=True)),
    )  # fmt: skip
