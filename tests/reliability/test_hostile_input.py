"""Hostile input (issue 8, item 6): property tests (hypothesis) of URI parsing, canonical JSON and mutable keys, and
path-safety checks on the real local store and a real API server with its real object store.

Labels, keys and URIs carrying ``..``, absolute paths, NUL, backslashes, RTL / zero-width / combining characters,
lone surrogates and very long strings must either be refused with the documented error class
(``kachery_cloud.errors``, doc/errors.md) or be handled, and never put a byte outside its place: in the client
directory (``sha1/aa/bb/cc/<h>``, ``mutables/<key>`` ...), in the bucket (``projects/<p>/sha1/...``,
``projects/<p>/packs/...``) or in the server's data directory.

Example counts are small in CI and ten times larger under ``--soak``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import re
import secrets
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import kachery_cloud as kcl
from kachery_cloud.errors import (
    InvalidArgumentError,
    InvalidMutableKeyError,
    InvalidURIError,
    KacheryCloudError,
    NotFoundError,
    SerializationError,
    ServerError,
    ServerUnreachableError,
)
from kachery_cloud.protocol.mutable_key import MAX_KEY_BYTES, validate_folder_key, validate_mutable_key
from kachery_cloud.protocol.serialization import canonical_json_bytes
from kachery_cloud.protocol.uri import format_uri, is_sha1_hex, parse_uri

from ..helpers import switch_client
from ..servers import RunningServer
from .conftest import Figure, Figures

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


# -------------------------------------------------------------------------------------------------- URIs


def test_uri_format_and_parse_round_trip_any_label_and_query(soak: bool, figures: Figures) -> None:
    runs = Counter[str]()
    extra_params = st.dictionaries(
        st.text(TEXT_CHAR, min_size=1, max_size=8).filter(lambda k: k != "label"), hostile(TEXT_CHAR), max_size=3
    )

    @fuzz(soak, 200, SHA1S, LABELS, extra_params)
    def check(sha1: str, label: str | None, extra: dict[str, str]) -> None:
        runs["examples"] += 1
        uri = format_uri(sha1, label)
        # Every hostile character is escaped: the URI is printable ASCII, safe to paste, log or put in a shell.
        assert uri.isascii() and uri.isprintable(), uri
        assert uri.startswith(f"sha1://{sha1}")
        if extra:  # other query parameters are kept by the parser
            uri += ("&" if label is not None else "?") + urlencode(extra)
        parsed = parse_uri(uri)
        assert parsed.sha1 == sha1  # labels never change the hash
        assert parsed.label == label
        for name, value in extra.items():
            assert parsed.query[name] == value
        assert str(parsed) == format_uri(sha1, label)

    check()
    figures.record(Figure(item="6 hostile input: URI format/parse round trip", runs=runs["examples"]))


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


def test_parse_uri_accepts_only_valid_hashes_and_refuses_everything_else_with_invalid_uri_error(
    soak: bool, figures: Figures
) -> None:
    runs = Counter[str]()

    @fuzz(soak, 300, uri_texts())
    def check(text: str) -> None:
        runs["examples"] += 1
        try:
            parsed = parse_uri(text)
        except InvalidURIError as e:  # the documented class; any other exception fails the test
            assert isinstance(e, ValueError) and str(e)
            runs["refused"] += 1
            return
        runs["accepted"] += 1
        assert is_sha1_hex(parsed.sha1)
        stripped = text.strip()
        assert stripped.startswith(f"sha1://{parsed.sha1}")
        assert stripped[len("sha1://") + 40 : len("sha1://") + 41] in ("", "/", "?")
        assert parsed.label == parsed.query.get("label")

    check()
    for not_text in (None, 1, 1.5, b"sha1://" + b"a" * 40, ["sha1://" + "a" * 40], {"uri": "x"}):
        with pytest.raises(InvalidURIError):
            parse_uri(not_text)  # type: ignore[arg-type]
    figures.record(
        Figure(
            item="6 hostile input: URI parsing of arbitrary text",
            runs=runs["examples"],
            details={"accepted": runs["accepted"], "refused": runs["refused"]},
        )
    )


def test_every_accepted_uri_can_be_written_back(soak: bool) -> None:
    """``str(parse_uri(u))`` is what load_file_info reports; a URI the parser accepts must survive it.

    Fails today: a raw lone surrogate in the query (``sha1://<h>?label=\\ud800``) is accepted by parse_uri, then
    ``format_uri`` raises UnicodeEncodeError from ``urllib.parse.quote`` (kachery_cloud/uri.py, format_uri).
    """

    @fuzz(soak, 100, uri_texts())
    @example(f"sha1://{'a' * 40}?label=\ud800")
    def check(text: str) -> None:
        try:
            parsed = parse_uri(text)
        except InvalidURIError:
            return
        try:
            again = parse_uri(str(parsed))
        except KacheryCloudError as e:  # a documented refusal would be acceptable; a crash is not
            assert isinstance(e, InvalidURIError), e
            return
        assert (again.sha1, again.label) == (parsed.sha1, parsed.label)

    check()


SHA1_OF_X = hashlib.sha1(b"x").hexdigest()


@pytest.mark.parametrize("label", ["\ud800", "name-\udcff.txt", "\udfff\ud800", 123], ids=repr)
def test_a_label_that_is_not_valid_unicode_text_is_refused_with_invalid_argument_error(
    label: Any, kachery_dir: Path, tmp_path: Path
) -> None:
    """Fails today: ``quote()`` in format_uri (kachery_cloud/uri.py) raises UnicodeEncodeError for a lone surrogate
    and TypeError for a non-str label, after store_text_local has written the blob and link_file its record."""
    with pytest.raises(InvalidArgumentError):
        format_uri(SHA1_OF_X, label)
    with pytest.raises(InvalidArgumentError):
        kcl.store_text_local("x", label=label)
    source = tmp_path / "source.txt"
    source.write_bytes(b"x")
    with pytest.raises(InvalidArgumentError):
        kcl.link_file(source, label=label)
    # Refused before anything is written: no link record for a URI the caller never got.
    assert [p for p in (kachery_dir / "linked_files").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("text", ["\ud800", "valid then \udfff"], ids=repr)
def test_text_that_is_not_valid_unicode_is_refused_with_serialization_error(text: str, kachery_dir: Path) -> None:
    """Fails today: store_text_local calls ``text.encode("utf-8")`` unguarded (kachery_cloud/objects.py), so a lone
    surrogate raises UnicodeEncodeError instead of the SerializationError store_text raises for other bad input."""
    with pytest.raises(SerializationError):
        kcl.store_text_local(text)
    assert [p for p in (kachery_dir / "sha1").rglob("*") if p.is_file()] == []  # nothing half-stored


# ---------------------------------------------------------------------------------------------- canonical JSON


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


def walk(x: Any) -> Iterator[Any]:
    yield x
    if isinstance(x, dict):
        for k, v in x.items():
            yield k
            yield from walk(v)
    elif isinstance(x, list | tuple):
        for v in x:
            yield from walk(v)


def reordered(x: Any, rng: random.Random) -> Any:
    """The same value with every dict's insertion order shuffled and every list turned into a tuple."""
    if isinstance(x, dict):
        items = list(x.items())
        rng.shuffle(items)
        return {k: reordered(v, rng) for k, v in items}
    if isinstance(x, list):
        return tuple(reordered(v, rng) for v in x)
    return x


def json_values(
    keys: st.SearchStrategy[Any] | None = None, floats: st.SearchStrategy[float] | None = None
) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**70), max_value=2**70),
        floats if floats is not None else st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e16, 1e300, 2.5, 1e-300, 5e-324, 1.7976931348623157e308]),
        hostile(ANY_CHAR, surrogates=True),
    )
    key_strategy = keys if keys is not None else hostile(ANY_CHAR, surrogates=True)
    return st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key_strategy, inner, max_size=4),
        max_leaves=25,
    )  # fmt: skip


def has_split_pair(value: Any) -> bool:
    """Whether a string holds a high then a low lone surrogate: JSON writes them as the escapes of one character
    outside the BMP, which json.loads reads back as that character. Not a hashing problem (both strings give the
    same canonical bytes, checked below), but such a value does not come back equal."""
    return any(isinstance(v, str) and re.search("[\ud800-\udbff][\udc00-\udfff]", v) is not None for v in walk(value))


def test_canonical_json_follows_the_documented_rules_and_agrees_with_the_oracle(soak: bool, figures: Figures) -> None:
    runs = Counter[str]()

    @fuzz(soak, 150, json_values(), st.randoms(use_true_random=False))
    def check(value: Any, rng: random.Random) -> None:
        runs["examples"] += 1
        data = canonical_json_bytes(value)
        assert data == oracle(value)
        if not any(isinstance(v, float) for v in walk(value)):  # nothing to normalize: plain json.dumps agrees
            plain = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
            assert data == plain
        assert data.isascii()
        parsed = json.loads(data)
        if not has_split_pair(value):
            assert parsed == value  # 1 == 1.0 in Python: the int/float rule keeps values equal
        assert not any(isinstance(v, float) and v.is_integer() for v in walk(parsed))
        assert canonical_json_bytes(parsed) == data  # a value and its JSON round trip hash the same
        # Neither dict insertion order nor tuples-for-lists change the bytes (or the hash).
        assert canonical_json_bytes(reordered(value, rng)) == data
        assert canonical_json_bytes(value) == data  # deterministic

    check()
    figures.record(Figure(item="6 hostile input: canonical JSON against the json.dumps oracle", runs=runs["examples"]))


def test_canonical_json_refuses_nan_and_infinity_anywhere_with_serialization_error(soak: bool) -> None:
    import numpy as np

    @fuzz(soak, 100, json_values(floats=st.floats()))
    def check(value: Any) -> None:
        non_finite = any(isinstance(v, float) and not math.isfinite(v) for v in walk(value))
        if non_finite:
            with pytest.raises(SerializationError, match=r"^\$.*(nan|inf)"):  # the message names the place
                canonical_json_bytes(value)
        else:
            assert canonical_json_bytes(value) == oracle(value)

    check()
    for bad in (
        float("nan"),
        [1, {"a": float("-inf")}],
        np.float64("nan"),
        {"x": np.float32("inf")},
        {float("nan"): 1},
    ):
        with pytest.raises(SerializationError):
            canonical_json_bytes(bad)


def json_key_of(key: Any) -> str:
    """The string json.dumps itself makes of a non-string dict key (an independent oracle)."""
    return next(iter(json.loads(json.dumps({key: 0}))))


def test_canonical_json_converts_non_string_keys_like_json_dumps_and_refuses_collisions(soak: bool) -> None:
    keys = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile(ANY_CHAR, surrogates=True))

    @fuzz(soak, 100, st.dictionaries(keys, st.integers(), max_size=6))
    @example({1: 1, "1": 2})
    @example({None: 1, "null": 2})
    @example({True: 1, "true": 2})
    @example({1.5: 1, "1.5": 2})
    def check(value: dict[Any, int]) -> None:
        non_finite = any(isinstance(k, float) and not math.isfinite(k) for k in value)
        mapped = {} if non_finite else {json_key_of(k): v for k, v in value.items()}
        if non_finite or len(mapped) < len(value):
            with pytest.raises(SerializationError):
                canonical_json_bytes(value)
            return
        data = canonical_json_bytes(value)
        assert data == oracle(mapped)  # keys are sorted as the strings they become
        assert canonical_json_bytes(json.loads(data)) == data

    check()


# ---------------------------------------------------------------------------------------------- mutable keys


def check_key_maps_inside(key: str, segments: list[str], root: Path) -> None:
    """The path LocalMutables builds for an accepted key (``root.joinpath(*segments)``) is strictly inside root."""
    assert segments == key.split("/")
    assert len(key.encode("utf-8")) <= MAX_KEY_BYTES
    for segment in segments:
        assert segment not in ("", ".", "..") and not segment.startswith(".")
        assert not any(ord(c) < 32 or ord(c) == 127 for c in segment)
        assert not has_surrogate(segment)
        assert len(segment.encode("utf-8")) <= 255
    path = root.joinpath(*segments)
    assert os.path.normpath(path) == str(path)  # nothing for the OS to collapse: no '..', '.', '//'
    assert path.is_relative_to(root) and path != root
    assert path.relative_to(root).parts == tuple(segments)


def test_mutable_keys_are_refused_or_map_strictly_inside_the_mutables_directory(soak: bool, figures: Figures) -> None:
    runs = Counter[str]()
    root = Path("/kachery-cloud/mutables")

    @fuzz(soak, 200, any_keys())
    def check(key: str) -> None:
        runs["examples"] += 1
        try:
            segments = validate_mutable_key(key)
        except InvalidMutableKeyError as e:
            assert isinstance(e, InvalidArgumentError) and isinstance(e, ValueError) and str(e)
            runs["refused"] += 1
        else:
            runs["accepted"] += 1
            assert all(s.startswith("@") for s in segments[:-1]) and not segments[-1].startswith("@")
            check_key_maps_inside(key, segments, root)
        try:
            folder = validate_folder_key(key)
        except InvalidMutableKeyError:
            return
        assert all(s.startswith("@") for s in folder)
        check_key_maps_inside(key, folder, root)

    check()
    for not_text in (None, 1, b"@lab/x", ["@lab", "x"]):
        with pytest.raises(InvalidMutableKeyError):
            validate_mutable_key(not_text)  # type: ignore[arg-type]
        with pytest.raises(InvalidMutableKeyError):
            validate_folder_key(not_text)  # type: ignore[arg-type]
    figures.record(
        Figure(
            item="6 hostile input: mutable key grammar",
            runs=runs["examples"],
            details={"accepted": runs["accepted"], "refused": runs["refused"]},
        )
    )


CONTROL_CHARACTERS = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cc"]


def test_every_control_character_is_refused_in_a_key() -> None:
    """doc/mutables_local.md: segments may not "contain control characters". Fails today for the C1 controls
    U+0080-U+009F (kachery_cloud/mutable_key.py, _segment_problem checks only < 32 and 127): U+009B is the 8-bit
    CSI, so a key printed by ``kachery-cloud mutable list`` can drive the terminal."""
    accepted = []
    for c in CONTROL_CHARACTERS:
        try:
            validate_mutable_key(f"@lab/a{c}b")
        except InvalidMutableKeyError:
            continue
        accepted.append(f"U+{ord(c):04X}")
    assert accepted == [], f"control characters accepted in keys: {', '.join(accepted)}"


@pytest.mark.parametrize("length", [232, 233, 255])
def test_a_value_segment_of_any_allowed_length_can_be_set_locally(length: int, kachery_dir: Path) -> None:
    """The grammar allows segments of up to 255 bytes. Fails today above 232: the temp file written beside the
    value is named ``.<name>.<16 hex>.part`` (kachery_cloud/local/fs.py, temp_path_in), 23 bytes longer than the
    name, so the kernel refuses it (ENAMETOOLONG) and a raw OSError escapes set_mutable_local."""
    key = "@lab/" + "x" * length
    validate_mutable_key(key)  # the grammar accepts it
    kcl.set_mutable_local(key, "value")
    assert kcl.get_mutable_local(key) == "value"
    assert (kachery_dir / "mutables" / "@lab" / key.split("/")[1]).read_text() == "value"


@pytest.mark.parametrize("length", [227, 228, 255])
def test_a_folder_segment_of_any_allowed_length_can_be_deleted_locally(length: int, kachery_dir: Path) -> None:
    """Fails today above 227 bytes: delete_mutable_folder_local renames the folder aside to
    ``.<name>.<12 hex>.deleting.part`` (kachery_cloud/local/mutables.py, LocalMutables.delete_folder), 28 bytes
    longer than the name: ENAMETOOLONG escapes as a raw OSError and the folder stays."""
    folder = "@" + "f" * (length - 1)
    kcl.set_mutable_local(f"{folder}/key", "value")
    assert kcl.delete_mutable_folder_local(folder) is True
    assert kcl.get_mutable_local(f"{folder}/key") is None
    assert list((kachery_dir / "mutables").iterdir()) == []


# ------------------------------------------------------------------------------------ the local store on disk


def check_client_directory(root: Path, mutables: dict[str, str]) -> list[str]:
    """Every file under the client directory in its documented place (doc/configuration.md, DESIGN.md §5), with
    the content its place promises; returns what is wrong."""
    problems: list[str] = []
    found_mutables: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if path.is_symlink():
            problems.append(f"symlink {path}")
            continue
        if path.is_dir():
            if rel[0] == "mutables" and len(rel) > 1:
                try:
                    validate_folder_key("/".join(rel[1:]))
                except InvalidMutableKeyError:
                    problems.append(f"directory outside the key grammar: {path}")
            continue
        match rel:
            case ("config.yaml" | "private.pem" | "public.pem",):
                pass
            case ("sha1", a, b, c, h) if is_sha1_hex(h) and (a, b, c) == (h[0:2], h[2:4], h[4:6]):
                if hashlib.sha1(path.read_bytes()).hexdigest() != h:
                    problems.append(f"blob {path} does not have SHA-1 {h}")
            case ("linked_files", "sha1", a, b, c, h) if is_sha1_hex(h) and (a, b, c) == (h[0:2], h[2:4], h[4:6]):
                if json.loads(path.read_text())["sha1"] != h:
                    problems.append(f"link record {path} is not for {h}")
            case ("hash_memo", kk, name) if is_sha1_hex(name) and kk == name[:2]:
                pass
            case ("tmp", "locks", name) if name.endswith(".lock") and is_sha1_hex(name[: -len(".lock")]):
                pass
            case ("mutables", *segments) if segments:
                key = "/".join(segments)
                try:
                    validate_mutable_key(key)
                except InvalidMutableKeyError:
                    problems.append(f"file outside the key grammar: {path}")
                    continue
                found_mutables[key] = path.read_bytes().decode("utf-8")
            case _:
                problems.append(f"unexpected file {path}")
    if found_mutables != mutables:
        missing = sorted(set(mutables) - set(found_mutables))
        extra = sorted(set(found_mutables) - set(mutables))
        wrong = sorted(k for k in set(mutables) & set(found_mutables) if mutables[k] != found_mutables[k])
        problems.append(f"mutables on disk differ: missing {missing!r}, unexpected {extra!r}, wrong value {wrong!r}")
    return problems


def files_outside(area: Path, allowed: list[Path]) -> list[Path]:
    """Files (and symlinks) under ``area`` that are not under one of the ``allowed`` directories."""
    return [
        p for p in area.rglob("*") if (p.is_file() or p.is_symlink()) and not any(p.is_relative_to(a) for a in allowed)
    ]


def test_local_store_keeps_hostile_labels_keys_and_values_in_their_place(
    kachery_dir: Path, tmp_path: Path, soak: bool, figures: Figures
) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    expected: dict[str, str] = {}
    runs = Counter[str]()
    numbers = itertools.count()
    started = time.monotonic()

    # Segments stay short here (under 200 bytes): longer ones hit the ENAMETOOLONG bug tested above.
    @fuzz(
        soak,
        30,
        LABELS,
        any_keys(),
        hostile(ANY_CHAR, surrogates=True),
        hostile_or_long(TEXT_CHAR),
        st.sampled_from(["keep", "delete", "delete_folder"]),
    )
    def check(label: str | None, key: str, value: str, content: str, then: str) -> None:
        runs["examples"] += 1
        n = next(numbers)
        data = content.encode("utf-8")
        uri = kcl.store_text_local(content, label=label)
        parsed = parse_uri(uri)
        assert (parsed.sha1, parsed.label) == (hashlib.sha1(data).hexdigest(), label)
        assert kcl.load_text(uri, local_only=True) == content

        document = {"label": label, "key": key, "value": value, "content": content}
        uri = kcl.store_json_local(document, label=label)
        assert parse_uri(uri).sha1 == hashlib.sha1(oracle(document)).hexdigest()
        assert kcl.load_json(uri, local_only=True) == document

        source = sources / f"stored-{n}"
        source.write_bytes(data + b"stored %d" % n)
        uri = kcl.store_file_local(source, label=label)
        assert Path(kcl.load_file(uri, local_only=True) or "").read_bytes() == source.read_bytes()
        linked = sources / f"linked-{n}"
        linked.write_bytes(data + b"linked %d" % n)
        uri = kcl.link_file(linked, label=label)
        assert kcl.load_file(uri, local_only=True) == str(linked)

        try:
            kcl.set_mutable_local(key, value)
        except InvalidMutableKeyError:
            runs["keys refused"] += 1
            with pytest.raises(InvalidMutableKeyError):
                kcl.get_mutable_local(key)
            with pytest.raises(InvalidMutableKeyError):
                kcl.delete_mutable_local(key)
            return
        except InvalidArgumentError:
            assert has_surrogate(value)  # the only value a str can hold that UTF-8 cannot
            runs["values refused"] += 1
            return
        runs["keys accepted"] += 1
        expected[key] = value
        assert kcl.get_mutable_local(key) == value
        if then == "delete":
            assert kcl.delete_mutable_local(key) is True
            del expected[key]
            assert kcl.get_mutable_local(key) is None
        elif then == "delete_folder" and "/" in key:
            folder = key.rsplit("/", 1)[0]
            assert kcl.delete_mutable_folder_local(folder) is True
            for gone in [k for k in expected if k.startswith(folder + "/")]:
                del expected[gone]
            assert kcl.get_mutable_local(key) is None

    check()
    problems = check_client_directory(kachery_dir, expected)
    problems += [f"file outside the client directory: {p}" for p in files_outside(tmp_path, [kachery_dir, sources])]
    figures.record(
        Figure(
            item="6 hostile input: local store paths",
            runs=runs["examples"],
            errors=len(problems),
            seconds=time.monotonic() - started,
            details={k: v for k, v in runs.items() if k != "examples"},
        )
    )
    assert problems == []


def test_loading_hostile_uris_locally_refuses_them_and_writes_nothing(
    kachery_dir: Path, tmp_path: Path, soak: bool, figures: Figures
) -> None:
    runs = Counter[str]()
    loaders: list[tuple[str, Callable[[str], Any]]] = [
        ("load_file", lambda u: kcl.load_file(u, local_only=True)),
        ("load_files", lambda u: kcl.load_files([u], local_only=True)[0]),
        ("load_file_info", lambda u: kcl.load_file_info(u, local_only=True)),
        ("load_text", lambda u: kcl.load_text(u, local_only=True)),
        ("load_json", lambda u: kcl.load_json(u, local_only=True)),
        ("load_npy", lambda u: kcl.load_npy(u, local_only=True)),
        ("load_pkl", lambda u: kcl.load_pkl(u, local_only=True)),
        ("load_bytes", lambda u: kcl.load_bytes(u, 0, 1, local_only=True)),
        ("cat_file", lambda u: kcl.cat_file(u, local_only=True)),
    ]

    @fuzz(soak, 100, uri_texts())
    def check(text: str) -> None:
        runs["examples"] += 1
        for name, load in loaders:
            try:
                result = load(text)
            except InvalidURIError:
                runs["refused"] += 1
                continue
            except NotFoundError:  # a well-formed URI of content that is not here
                assert name in ("load_bytes", "cat_file"), name
                continue
            assert result is None, (name, text, result)

    check()
    written = [p for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()]
    figures.record(
        Figure(
            item="6 hostile input: local loads of hostile URIs",
            runs=runs["examples"],
            errors=len(written),
            details={"refusals": runs["refused"], "loaders": len(loaders)},
        )
    )
    assert written == []  # a load with local_only=True writes nothing at all


# --------------------------------------------------------------------------------------------- project ids etc.


@pytest.mark.parametrize(
    ("validator", "valid"),
    [
        ("project_id", "lab-project_1"),
        ("task_name", "mylab.count_spikes.1"),
        ("task_id", "a" * 40),
        ("feed_id", "b" * 32),
    ],
)
@pytest.mark.parametrize("suffix", ["\n", "\\..\\x", "\x00", "\u202e"], ids=repr)
def test_identifiers_are_matched_whole(validator: str, valid: str, suffix: str) -> None:
    """Project ids become bucket prefixes (``projects/<p>/``). Fails today for a trailing newline: the patterns
    end in ``$``, which ``re.match`` lets match before a final '\\n' (api_server/services/projects.py PROJECT_ID_RE,
    kachery_cloud/task_format.py TASK_NAME_RE and TASK_ID_RE, kachery_cloud/feed_format.py FEED_ID_RE)."""
    from api_server.errors import InvalidRequest
    from api_server.services.feeds import _check_feed_id
    from api_server.services.projects import validate_project_id
    from kachery_cloud.protocol.task_format import validate_task_id, validate_task_name

    check: Callable[[str], object] = {
        "project_id": validate_project_id,
        "task_name": validate_task_name,
        "task_id": validate_task_id,
        "feed_id": _check_feed_id,
    }[validator]
    check(valid)  # the valid one passes
    with pytest.raises((InvalidArgumentError, InvalidRequest)):
        check(valid + suffix)


# --------------------------------------------------------------------------------------------- the server


OBJECT_KEY = re.compile(
    r"projects/(?P<project>[a-z0-9][a-z0-9_-]{0,63})/"
    r"(?:sha1/(?P<a>[0-9a-f]{2})/(?P<b>[0-9a-f]{2})/(?P<c>[0-9a-f]{2})/(?P<sha1>[0-9a-f]{40})(?:\.[0-9a-f]{32})?"
    r"|packs/(?P<pa>[0-9a-f]{2})/(?P<pack>[0-9a-f]{40}))"
)


def bucket_problems(cloud: RunningServer, projects: set[str]) -> tuple[list[str], list[str]]:
    """Every object key in the bucket, and those not in the documented shape or outside ``projects``."""
    s3, bucket = cloud.s3_client()
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    ]
    problems = []
    for key in keys:
        m = OBJECT_KEY.fullmatch(key)
        if m is None or m["project"] not in projects:
            problems.append(f"object key outside the documented layout: {key!r}")
        elif m["sha1"] and (m["a"], m["b"], m["c"]) != (m["sha1"][0:2], m["sha1"][2:4], m["sha1"][4:6]):
            problems.append(f"blob key with the wrong fan-out: {key!r}")
        elif m["pack"] and m["pa"] != m["pack"][:2]:
            problems.append(f"pack key with the wrong fan-out: {key!r}")
    return keys, problems


def data_dir_problems(cloud: RunningServer, before: set[Path], object_keys: list[str]) -> list[str]:
    """New files in the server's data directory must be the database, logs, or the embedded nanio's copy of an
    object of the bucket (``s3/<bucket>/<key>`` and ``s3/<bucket>/.nanio-meta/<key>.json``) or its staging."""
    _, bucket = cloud.s3_client()
    keys = set(object_keys)
    problems = []
    for path in sorted(set(cloud.data_dir.rglob("*")) - before):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(cloud.data_dir).parts
        if len(rel) == 1 and (rel[0].startswith("server.db") or rel[0].endswith(".log")):
            continue
        if rel[:2] == ("s3", ".nanio"):
            continue  # nanio's multipart staging
        if rel[:2] == ("s3", bucket) and len(rel) > 2:
            if rel[2] == ".nanio-meta" and rel[-1].endswith(".json"):
                key = "/".join(rel[3:])[: -len(".json")]
            else:
                key = "/".join(rel[2:])
            if key in keys:
                continue
        problems.append(f"unexpected file in the server's data directory: {path}")
    return problems


def valid_hostile_keys(folder: str) -> list[str]:
    """Keys the grammar accepts although they look dangerous: each must stay one row, not a path."""
    return [
        f"{folder}/x..",
        f"{folder}/@../x",
        f"{folder}/@../@../etc",
        f"{folder}/@.../x",
        f"{folder}/a\\..\\..\\b",
        f"{folder}/C:\\Windows",
        f"{folder}/%2e%2e%2f%00",
        f"{folder}/\u202eexe.txt",
        f"{folder}/\u200b",
        f"{folder}/e\u0301",
        f"{folder}/\u00e9",
        f"{folder}/@\uff0e\uff0e/\u2215etc\u2215passwd",
        f"{folder}/\U0001f600",
        f"{folder}/\ufeff",
        f"{folder}/~root",
        f"{folder}/" + "x" * 255,
        f"{folder}/" + "\u00e9" * 127,
    ]


INVALID_KEYS = [
    "/etc/passwd",
    "@lab/../x",
    "@lab/./x",
    "@lab//x",
    "@lab/x/",
    "@lab/.x",
    "@lab/x\x00y",
    "@lab/x\ny",
    "@lab/\ud800",
    "lab/x",
    "..",
    "",
    "@lab/" + "x" * 256,
    "@a/" * 400 + "x",
]


def test_cloud_hostile_labels_keys_and_messages_stay_inside_the_project(
    cloud_client: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    cloud = cloud_client
    before = set(cloud.data_dir.rglob("*"))
    started = time.monotonic()
    labels = [*TEXT_PIECES, "x" * 5000, "\u202e" * 100 + "/" * 100]
    uris: dict[str, bytes] = {}

    # Content through every path to the store, each under hostile labels: one blob inline (store_text), many small
    # ones inline in one request (a pack), a single PUT, a multipart upload (over 1 MiB in these servers' settings).
    for label in ("../../../../etc/passwd", "\x00", "\u202e" * 100 + "/" * 100):
        uri = kcl.store_text(f"text {label} {secrets.token_hex(4)}", label=label)
        assert parse_uri(uri).label == label
        uris[uri] = kcl.load_text(uri, local_only=True).encode("utf-8")  # type: ignore[union-attr]
    document = {label: label for label in labels}
    uri = kcl.store_json(document, label="C:\\Windows\\")
    uris[uri] = oracle(document)
    sizes = [10 + i for i in range(len(labels))] + [200_000, 1_500_000]
    files = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"file-{i}"
        path.write_bytes(os.urandom(size))
        files.append(path)
    file_labels = [*labels, "/abs", "\U000e0041"]
    stored = kcl.store_files(files, labels=file_labels)
    for path, uri, label in zip(files, stored, file_labels, strict=True):
        assert parse_uri(uri).label == label
        uris[uri] = path.read_bytes()

    # Mutables with keys that look like paths; values with NUL and odd Unicode.
    folder = f"@hostile{secrets.token_hex(3)}"
    keys = valid_hostile_keys(folder)
    for i, key in enumerate(keys):
        assert kcl.set_mutable(key, f"value {i} \x00 \u202e {key}") == 1
    for i, key in enumerate(keys):
        assert kcl.get_mutable(key) == f"value {i} \x00 \u202e {key}"
    assert kcl.list_mutables(folder) == sorted(keys)
    for key in INVALID_KEYS:
        for validate in (validate_mutable_key, validate_folder_key):
            with pytest.raises(InvalidMutableKeyError):
                validate(key)  # invalid as a key and as a folder key, so every call below must refuse it
        for call in (
            lambda k: kcl.set_mutable(k, "v"),
            kcl.get_mutable,
            kcl.delete_mutable,
            kcl.delete_mutable_folder,
            kcl.list_mutables,
        ):
            with pytest.raises(InvalidMutableKeyError):
                call(key)

    # Feeds have no names; their messages may hold anything JSON can.
    feed = kcl.create_feed()
    messages = [{"../../x": "\x00", "\u202e": ["/etc/passwd", "\ud800"], "C:\\": {"": None}}, {"k": "x" * 10_000}]
    feed.append_messages(messages)
    assert kcl.load_feed(feed.uri).get_next_messages(timeout_sec=10) == messages
    for bad in (
        "kachery-feed://../../x",
        "kachery-feed:///etc/passwd",
        "kachery-feed://" + "a" * 31 + "\x00",
        "\ud800",
    ):
        with pytest.raises(InvalidURIError):
            kcl.load_feed(bad)

    # Everything is in the bucket where the layout says, and nowhere else.
    object_keys, problems = bucket_problems(cloud, {"default"})
    problems += data_dir_problems(cloud, before, object_keys)

    # ... and a second machine gets exactly those bytes back.
    switch_client(monkeypatch, tmp_path / "second-machine")
    for uri, data in uris.items():
        assert Path(kcl.load_file(uri) or "").read_bytes() == data, uri
    figures.record(
        Figure(
            item="6 hostile input: bucket keys and server data directory",
            runs=len(labels) + len(keys) + len(INVALID_KEYS) + len(messages),
            errors=len(problems),
            seconds=time.monotonic() - started,
            details={"objects_checked": len(object_keys), "labels": len(labels), "keys": len(keys)},
        )
    )
    assert problems == []


def fresh_api() -> Any:
    """A client of its own (own connection, one attempt), so that one request's fate cannot touch another's."""
    from kachery_cloud.api.client import ApiClient
    from kachery_cloud.config import load_config
    from kachery_cloud.identity import load_identity

    config = load_config()
    return ApiClient(config.effective_api_url, load_identity(config), max_attempts=1)


# (what, endpoint, body, whether the server must refuse it): a cursor (``after``) is only compared with keys, so
# answering it is fine too; anything but a 4xx or an answer (a 500, a dropped connection) is a failure.
REFUSE, ANSWER_OR_REFUSE = True, False
RAW_CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("set key with NUL", "/api/mutables/set", {"key": "@a/b\x00c", "value": "v"}, REFUSE),
    ("set key with surrogate", "/api/mutables/set", {"key": "@a/b\ud800", "value": "v"}, REFUSE),
    ("set key ..", "/api/mutables/set", {"key": "@a/..", "value": "v"}, REFUSE),
    ("set absolute key", "/api/mutables/set", {"key": "/etc/passwd", "value": "v"}, REFUSE),
    ("set long key", "/api/mutables/set", {"key": "@a/" * 400 + "x", "value": "v"}, REFUSE),
    ("set surrogate value", "/api/mutables/set", {"key": "@a/b", "value": "\udc80"}, REFUSE),
    ("get key with NUL", "/api/mutables/get", {"key": "@a/\x00"}, REFUSE),
    ("delete key ..", "/api/mutables/delete", {"key": "@a/.."}, REFUSE),
    ("delete-folder ..", "/api/mutables/delete-folder", {"folder_key": "@a/.."}, REFUSE),
    ("delete-folder /", "/api/mutables/delete-folder", {"folder_key": "/"}, REFUSE),
    ("list folder ..", "/api/mutables/list", {"folder_key": "@a/.."}, REFUSE),
    ("list folder with NUL", "/api/mutables/list", {"folder_key": "@a\x00"}, REFUSE),
    ("list after with NUL", "/api/mutables/list", {"after": "@a/\x00"}, ANSWER_OR_REFUSE),
    ("list after with surrogate", "/api/mutables/list", {"after": "@a/\ud800"}, ANSWER_OR_REFUSE),
    ("project id with NUL", "/api/mutables/get", {"key": "@a/b", "project_id": "default\x00"}, REFUSE),
    ("project id with surrogate", "/api/mutables/get", {"key": "@a/b", "project_id": "default\ud800"}, REFUSE),
    ("project id ..", "/api/mutables/get", {"key": "@a/b", "project_id": "../default"}, REFUSE),
    ("find traversal hash", "/api/blobs/find", {"sha1s": ["../../" + "a" * 34]}, REFUSE),
    ("find NUL hash", "/api/blobs/find", {"sha1s": ["a" * 39 + "\x00"]}, REFUSE),
    ("find surrogate hash", "/api/blobs/find", {"sha1s": ["a" * 39 + "\ud800"]}, REFUSE),
    ("need traversal hash", "/api/blobs/need", {"blobs": [{"sha1": "../" + "a" * 37, "size": 3}]}, REFUSE),
    ("need uppercase hash", "/api/blobs/need", {"blobs": [{"sha1": "A" * 40, "size": 3}]}, REFUSE),
    ("inline traversal hash", "/api/blobs/inline", {"blobs": [{"sha1": "../" + "a" * 37, "data": "YWJj"}]}, REFUSE),
    ("inline project id with NUL", "/api/blobs/inline", {"project_id": "x\x00", "blobs": []}, REFUSE),
    ("need project id with surrogate", "/api/blobs/need", {"project_id": "\ud800", "blobs": []}, REFUSE),
]


def test_hostile_requests_that_skip_the_client_checks_are_refused_by_the_server(
    cloud_client: RunningServer, figures: Figures
) -> None:
    """The server checks what the client checks (a client may be anyone's code). Each request must be refused with
    a 4xx and its error code (a cursor may also just be answered), never a 500 or a dropped connection, and must
    leave nothing in the bucket or the data directory.

    Fails today: on SQLite a lone surrogate in ``project_id`` or ``after`` is a 500 (UnicodeEncodeError in the
    driver); on PostgreSQL so is a NUL in them ("PostgreSQL text fields cannot contain NUL"). Neither is checked
    before it reaches the database (api_server/services/projects.py caller_project/get_project,
    api_server/services/mutables.py list_keys)."""
    before = set(cloud_client.data_dir.rglob("*"))
    bad: dict[str, str] = {}
    for name, path, body, must_refuse in RAW_CASES:
        try:
            fresh_api().call("POST", path, json_body=body, idempotent=False)
            outcome = "answered"
        except ServerError as e:
            outcome = f"{e.status} {e.error_code}"
        except ServerUnreachableError as e:
            outcome = f"connection lost: {e}"
        if not (re.fullmatch(r"4\d\d \w+", outcome) or (outcome == "answered" and not must_refuse)):
            bad[name] = outcome
    object_keys, problems = bucket_problems(cloud_client, {"default"})
    problems += data_dir_problems(cloud_client, before, object_keys)
    figures.record(
        Figure(
            item="6 hostile input: raw API requests",
            runs=len(RAW_CASES),
            errors=len(bad) + len(problems),
            details={"failed": bad},
        )
    )
    assert bad == {}
    assert problems == []


def test_a_hostile_request_leaves_the_connection_usable_or_says_it_closes(cloud: RunningServer) -> None:
    """After answering a request on a keep-alive connection, the server either takes the next request on it or
    says ``Connection: close``. Fails today after a 500 (here: a lone surrogate or a NUL in ``project_id``, see
    above): api_server/app.py ``_unexpected`` sends the 500 without that header, Starlette re-raises the exception
    and uvicorn then closes the socket. requests keeps the connection in its pool, so the client's next call fails
    with ServerUnreachableError ("connection reset"), and a compare-and-swap ``set_mutable`` is not retried.
    Checked on one raw connection (anonymous ``mutables/get``, which names its project), where the outcome does
    not depend on how fast the close arrives."""
    import http.client

    failures = []
    for project_id in ("default\ud800", "default\x00", "no-such-project"):
        connection = http.client.HTTPConnection("127.0.0.1", cloud.port, timeout=30)
        try:
            body = json.dumps({"key": "@a/b", "project_id": project_id}).encode("ascii")
            connection.request("POST", "/api/mutables/get", body=body, headers={"Content-Type": "application/json"})
            first = connection.getresponse()
            first.read()
            if (first.getheader("Connection") or "").lower() == "close":
                continue  # announced: a client opens a new connection
            try:
                connection.request("GET", "/api/health")
                second = connection.getresponse()
                second.read()
                assert second.status == 200
            except (OSError, http.client.HTTPException) as e:
                failures.append(f"after HTTP {first.status} for project_id {project_id!r}: {type(e).__name__} {e}")
        finally:
            connection.close()
    assert failures == []


def test_client_and_server_agree_on_the_key_grammar(cloud_client: RunningServer, soak: bool, figures: Figures) -> None:
    """Whatever key the client refuses, the server refuses too (400 invalid_key), and whatever the client accepts,
    the server stores as exactly that key."""
    runs = Counter[str]()
    disagreements: list[str] = []

    @fuzz(soak, 25, any_keys(), hostile(TEXT_CHAR))
    def check(key: str, value: str) -> None:
        runs["examples"] += 1
        try:
            validate_mutable_key(key)
            client_accepts = True
        except InvalidMutableKeyError:
            client_accepts = False
        api = fresh_api()
        try:
            api.call("POST", "/api/mutables/set", json_body={"key": key, "value": value}, idempotent=False)
        except ServerError as e:
            if client_accepts or (e.status, e.error_code) != (400, "invalid_key"):
                disagreements.append(f"{key!r}: client accepts {client_accepts}, server {e.status} {e.error_code}")
            runs["refused"] += 1
            return
        if not client_accepts:
            disagreements.append(f"{key!r}: the client refuses it, the server stored it")
            return
        runs["stored"] += 1
        assert kcl.get_mutable(key) == value

    check()
    _, problems = bucket_problems(cloud_client, {"default"})
    figures.record(
        Figure(
            item="6 hostile input: client and server key grammar",
            runs=runs["examples"],
            errors=len(disagreements) + len(problems),
            details={"stored": runs["stored"], "refused": runs["refused"]},
        )
    )
    assert disagreements == []
    assert problems == []
