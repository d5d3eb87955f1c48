from pathlib import Path

import pytest

import kachery_cloud as kcl
from kachery_cloud import InvalidArgumentError, InvalidMutableKeyError


def test_set_get_round_trip_and_default() -> None:
    assert kcl.get_mutable_local("@lab/@exp1/latest") is None
    assert kcl.get_mutable_local("@lab/@exp1/latest", default_value="none") == "none"
    kcl.set_mutable_local("@lab/@exp1/latest", "sha1://abc")
    assert kcl.get_mutable_local("@lab/@exp1/latest") == "sha1://abc"
    kcl.set_mutable_local("@lab/@exp1/latest", "ünïcode\nvalue")
    assert kcl.get_mutable_local("@lab/@exp1/latest", default_value="none") == "ünïcode\nvalue"
    kcl.set_mutable_local("top", "")
    assert kcl.get_mutable_local("top", default_value="none") == ""


def test_delete_and_delete_folder() -> None:
    kcl.set_mutable_local("@lab/@exp1/a", "1")
    kcl.set_mutable_local("@lab/@exp1/@sub/b", "2")
    kcl.set_mutable_local("@lab/@exp2/a", "3")
    assert kcl.delete_mutable_local("@lab/@exp1/a") is True
    assert kcl.delete_mutable_local("@lab/@exp1/a") is False
    assert kcl.get_mutable_local("@lab/@exp1/a") is None
    assert kcl.delete_mutable_folder_local("@lab/@exp1") is True
    assert kcl.get_mutable_local("@lab/@exp1/@sub/b") is None
    assert kcl.get_mutable_local("@lab/@exp2/a") == "3"
    assert kcl.delete_mutable_folder_local("@lab/@exp1") is False


def test_writes_leave_no_temp_files(kachery_dir: Path) -> None:
    for i in range(20):
        kcl.set_mutable_local("@a/k", str(i))
    assert sorted(p.name for p in (kachery_dir / "mutables" / "@a").iterdir()) == ["k"]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("test/key1", "folder segment 'test' must start with '@' \\(for example '@test/key1'\\)"),
        ("@lab/@exp", "must not start with '@'"),
        ("@lab/../x", "'..' is not allowed"),
        ("./x", "'.' is not allowed"),
        ("@lab//x", "empty segment"),
        ("/x", "empty segment"),
        ("x/", "empty segment"),
        ("", "must not be empty"),
        ("@lab/.hidden", "reserved"),
        ("@/x", "needs a name"),
        ("a\x00b", "control character"),
        ("x" * 300, "longer than 255 bytes"),
    ],
)
def test_invalid_keys_are_refused_with_the_reason(key: str, message: str) -> None:
    with pytest.raises(InvalidMutableKeyError, match=message):
        kcl.set_mutable_local(key, "v")
    with pytest.raises(InvalidMutableKeyError):
        kcl.get_mutable_local(key)


def test_invalid_folder_keys() -> None:
    with pytest.raises(InvalidMutableKeyError, match="every segment must start with '@'"):
        kcl.delete_mutable_folder_local("@lab/exp")
    with pytest.raises(InvalidMutableKeyError):
        kcl.delete_mutable_folder_local("@lab/..")


def test_values_must_be_strings() -> None:
    with pytest.raises(InvalidArgumentError, match="must be a str, not int"):
        kcl.set_mutable_local("k", 3)  # type: ignore[arg-type]
