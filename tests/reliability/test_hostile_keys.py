"""Hostile input: the mutable key grammar (hypothesis), control characters, segment lengths."""

import os
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

import kachery_cloud as kcl
from kachery_cloud.errors import (
    InvalidArgumentError,
    InvalidMutableKeyError,
)
from kachery_cloud.protocol.mutable_key import MAX_KEY_BYTES, validate_folder_key, validate_mutable_key

from .conftest import Figure, Figures
from .hostile_kit import any_keys, fuzz, has_surrogate

# ---------------------------------------------------------------------------------------------- mutable keys


def check_key_maps_inside(key: str, segments: list[str], root: Path) -> None:
    """The path LocalMutables builds for an accepted key (``root.joinpath(*segments)``) is strictly inside root."""
    key = unicodedata.normalize("NFC", key)  # the one form of a key
    assert segments == key.split("/")
    assert len(key.encode("utf-8")) <= MAX_KEY_BYTES
    for segment in segments:
        assert segment not in ("", ".", "..") and not segment.startswith(".")
        assert not any(ord(c) < 32 or ord(c) == 127 for c in segment)
        assert not any(unicodedata.category(c) in ("Cf", "Zl", "Zp") for c in segment)  # nothing invisible
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
