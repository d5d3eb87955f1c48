"""A failing store leaves nothing behind: no blob, no temp file."""

from pathlib import Path
from typing import BinaryIO

import pytest

import kachery_cloud as kcl
from kachery_cloud import SerializationError
from kachery_cloud._context import local_directory
from kachery_cloud.protocol.hashing import sha1_of_bytes

from ..helpers import blob_files


def all_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def test_a_writer_that_fails_half_way_leaves_nothing(kachery_dir: Path) -> None:
    data = b"x" * 10_000

    def fail_half_way(f: BinaryIO) -> None:
        f.write(data[:5000])
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        local_directory().blobs.put(sha1_of_bytes(data), fail_half_way)
    assert blob_files(kachery_dir) == []


def test_unserializable_objects_leave_nothing(kachery_dir: Path) -> None:
    with pytest.raises(SerializationError):
        kcl.store_json_local({"a": object()})
    with pytest.raises(SerializationError):
        kcl.store_pkl_local([1, 2, object()])
    with pytest.raises(SerializationError):
        kcl.store_text_local(b"bytes")  # type: ignore[arg-type]
    assert all_files(kachery_dir) == []
