import pytest

from kachery_cloud import InvalidURIError
from kachery_cloud.protocol.uri import format_uri, parse_uri

H = "b971c6ef19b1d70ae8f0feb989b106c319b36230"


def test_format_quotes_the_label_like_kachery_cloud() -> None:
    assert format_uri(H) == f"sha1://{H}"
    assert format_uri(H, "test_content.txt") == f"sha1://{H}?label=test_content.txt"
    assert format_uri(H, "a b/c&d") == f"sha1://{H}?label=a%20b/c%26d"


def test_parse_round_trips_and_unquotes_the_label() -> None:
    parsed = parse_uri(format_uri(H, "a b/c&d"))
    assert parsed.sha1 == H
    assert parsed.label == "a b/c&d"
    assert str(parsed) == format_uri(H, "a b/c&d")


def test_parse_tolerates_extra_query_parameters_and_the_legacy_file_name_form() -> None:
    parsed = parse_uri(f"sha1://{H}?label=x.txt&location=/data/x.txt&zone=default")
    assert (parsed.sha1, parsed.label) == (H, "x.txt")
    assert parsed.query["zone"] == "default"
    assert parse_uri(f"sha1://{H}/studysets.json").sha1 == H
    assert parse_uri(f"  sha1://{H}\n").sha1 == H


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "not a URI"),
        (H, "not a URI"),
        (f"ipfs://{H}", "unsupported URI scheme 'ipfs'"),
        (f"sha1://{H[:-1]}", "39 characters"),
        (f"sha1://{H}0", "41 characters"),
        (f"sha1://{H[:-1]}g", "not a SHA-1"),
        (f"sha1://{H.upper()}", "must be lowercase"),
        ("sha1://", "0 characters"),
    ],
)
def test_parse_rejects_malformed_uris_saying_why(uri: str, message: str) -> None:
    with pytest.raises(InvalidURIError, match=message) as info:
        parse_uri(uri)
    assert isinstance(info.value, ValueError)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(InvalidURIError, match="must be a str"):
        parse_uri(b"sha1://x")  # type: ignore[arg-type]


def test_format_rejects_a_bad_hash() -> None:
    with pytest.raises(InvalidURIError):
        format_uri("abc")
