"""Hostile input: URIs and labels (property tests of parsing and writing, invalid Unicode)."""

import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import example
from hypothesis import strategies as st

import kachery_cloud as kcl
from kachery_cloud.errors import (
    InvalidArgumentError,
    InvalidURIError,
    KacheryCloudError,
    SerializationError,
)
from kachery_cloud.protocol.uri import format_uri, is_sha1_hex, parse_uri

from .conftest import Figure, Figures
from .hostile_kit import LABELS, SHA1S, TEXT_CHAR, fuzz, hostile, uri_texts

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
