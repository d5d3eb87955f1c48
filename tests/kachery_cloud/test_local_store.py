"""The local store on the real filesystem: round trips, invariants, errors, link_file, ranges."""

import fcntl
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kachery_cloud as kcl
from kachery_cloud import IntegrityError, InvalidArgumentError, LocalFileError, NotConnectedError, NotFoundError
from kachery_cloud._context import local_directory
from kachery_cloud.protocol.hashing import sha1_of_bytes, sha1_of_file

from ..helpers import blob_files, bytes_read_by_this_process
from ..servers import free_port

MISSING = "sha1://" + "0" * 40


def test_store_file_returns_the_kachery_cloud_uri_and_a_read_only_blob(tmp_path: Path, kachery_dir: Path) -> None:
    source = tmp_path / "test_content.txt"
    source.write_text("test-content\n")
    uri = kcl.store_file_local(source, label="test_content.txt")
    assert uri == "sha1://b971c6ef19b1d70ae8f0feb989b106c319b36230?label=test_content.txt"
    path = Path(kcl.load_file(uri) or "")
    assert path == kachery_dir / "sha1/b9/71/c6/b971c6ef19b1d70ae8f0feb989b106c319b36230"
    assert path.read_text() == "test-content\n"
    assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0
    assert kcl.store_file_local(str(source)) == "sha1://b971c6ef19b1d70ae8f0feb989b106c319b36230"


def test_object_round_trips_and_labels_never_change_the_hash() -> None:
    cases = [
        (kcl.store_text_local, kcl.load_text, "héllo\n"),
        (kcl.store_json_local, kcl.load_json, {"b": [1, 2.5, None], "a": "x"}),
        (kcl.store_pkl_local, kcl.load_pkl, {"n": 3, "t": (1, "x"), "s": {1, 2}}),
    ]
    for store, load, value in cases:
        uri = store(value)
        assert store(value, label="some label") == uri + "?label=some%20label"
        assert load(uri) == value
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    loaded = kcl.load_npy(kcl.store_npy_local(array, label="a.npy"))
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)
    pkl = kcl.load_pkl(kcl.store_pkl_local({"array": array, "n": 3}))
    np.testing.assert_array_equal(pkl["array"], array)
    assert pkl["n"] == 3


def test_missing_content_is_none_locally_and_needs_a_server_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    for load in (kcl.load_file, kcl.load_text, kcl.load_json, kcl.load_npy, kcl.load_pkl, kcl.load_file_info):
        assert load(MISSING, local_only=True) is None
    monkeypatch.setenv("KACHERY_CLOUD_API_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens there
    monkeypatch.setenv("KACHERY_CLOUD_RETRY_SEC", "1")
    with pytest.raises(NotConnectedError, match=r"is not in the local store .*cannot reach .*local_only=True"):
        kcl.load_file(MISSING)
    with pytest.raises(NotFoundError):
        kcl.cat_file(MISSING, local_only=True)
    with pytest.raises(NotFoundError):
        kcl.load_bytes(MISSING, 0, 1, local_only=True)


def test_storing_existing_content_does_not_rewrite_it(tmp_path: Path) -> None:
    uri = kcl.store_text_local("same")
    blob = Path(kcl.load_file(uri) or "")
    inode = blob.stat().st_ino
    (tmp_path / "same.txt").write_text("same")
    assert kcl.store_file_local(tmp_path / "same.txt") == uri
    assert kcl.store_text_local("same") == uri
    assert blob.stat().st_ino == inode


def test_dest_copies_atomically_and_reports_bad_destinations(tmp_path: Path) -> None:
    uri = kcl.store_text_local("payload")
    dest = tmp_path / "out.txt"
    dest.write_text("old")
    assert kcl.load_file(uri, dest=dest) == str(dest)
    assert dest.read_text() == "payload"
    assert os.access(dest, os.W_OK)  # a user's copy, not a read-only blob
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    with pytest.raises(LocalFileError, match="is a directory"):
        kcl.load_file(uri, dest=tmp_path)
    with pytest.raises(LocalFileError, match="does not exist"):
        kcl.load_file(uri, dest=tmp_path / "no" / "such" / "dir.txt")


def test_load_bytes_reads_only_the_requested_range(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    data = os.urandom(1 << 20) * 32  # 32 MiB
    source.write_bytes(data)
    uri = kcl.store_file_local(source)
    before = bytes_read_by_this_process()
    assert kcl.load_bytes(uri, 20_000_000, 20_000_010) == data[20_000_000:20_000_010]
    assert bytes_read_by_this_process() - before < 1 << 20
    assert kcl.load_bytes(uri, len(data) - 3, None) == data[-3:]
    assert kcl.load_bytes(uri, 5, 5) == b""


@pytest.mark.parametrize(("start", "end"), [(-1, 2), (3, 2), (0, 101), (101, None), ("0", 2), (True, 2)])
def test_load_bytes_rejects_bad_ranges(start: object, end: object) -> None:
    uri = kcl.store_text_local("x" * 100)
    with pytest.raises(InvalidArgumentError):
        kcl.load_bytes(uri, start, end)  # type: ignore[arg-type]


def test_cat_file_and_load_bytes_to_stdout(capfd: pytest.CaptureFixture[bytes]) -> None:
    uri = kcl.store_text_local("line one\nline two\n")
    kcl.cat_file(uri)
    assert capfd.readouterr().out == "line one\nline two\n"
    assert kcl.load_bytes(uri, 5, 8, write_to_stdout=True) is None
    assert capfd.readouterr().out == "one"


def test_load_file_info_locally(tmp_path: Path) -> None:
    uri = kcl.store_text_local("info", label="i.txt")
    info = kcl.load_file_info(uri)
    assert info is not None
    assert info["size"] == 4 and info["sha1"] == sha1_of_bytes(b"info") and info["linked"] is False
    assert info["uri"] == uri and Path(info["local_path"]).read_text() == "info"


def test_link_file_serves_the_original_without_copying(tmp_path: Path, kachery_dir: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"linked content")
    uri = kcl.link_file(source, label="data.bin")
    assert uri.endswith("?label=data.bin")
    assert blob_files(kachery_dir) == []
    assert kcl.load_file(uri) == str(source)
    assert kcl.load_text(uri) == "linked content"
    assert kcl.load_file_info(uri)["linked"] is True  # type: ignore[index]


def test_linked_file_touched_but_unchanged_is_still_served(tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"stable")
    uri = kcl.link_file(source)
    os.utime(source, ns=(1, 1))
    assert kcl.load_file(uri) == str(source)


def test_linked_file_that_changed_is_refused_and_unlinked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"original")
    uri = kcl.link_file(source)
    source.write_bytes(b"modified")
    with caplog.at_level(logging.WARNING, logger="kachery_cloud"):
        assert kcl.load_file(uri, local_only=True) is None
    assert "changed since it was linked" in caplog.text
    source.write_bytes(b"original")  # the link record is gone, so even the old content is not served
    assert kcl.load_file(uri, local_only=True) is None


def test_linked_file_that_was_deleted_is_not_found(tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"x")
    uri = kcl.link_file(source)
    source.unlink()
    assert kcl.load_file(uri, local_only=True) is None


def test_bytes_that_do_not_match_their_hash_are_never_stored(kachery_dir: Path) -> None:
    blobs = local_directory().blobs
    wrong = sha1_of_bytes(b"expected")
    with pytest.raises(IntegrityError, match=f"expected to have SHA-1 {wrong}"):
        blobs.put(wrong, lambda f: f.write(b"something else"))
    assert blob_files(kachery_dir) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.txt", "no such file"),
        (lambda d: d, "is a directory"),
        (lambda d: (os.mkfifo(d / "fifo"), d / "fifo")[1], "not a regular file"),
    ],
)
def test_bad_source_files_are_reported(tmp_path: Path, kachery_dir: Path, make: object, message: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    for store in (kcl.store_file_local, kcl.link_file):
        with pytest.raises(LocalFileError, match=message):
            store(path)
    assert not (kachery_dir / "sha1").exists() or blob_files(kachery_dir) == []


def test_a_killed_writers_temp_file_is_removed_but_a_live_one_is_kept(kachery_dir: Path) -> None:
    data = b"content whose directory has leftovers"
    sha1 = sha1_of_bytes(data)
    blob = local_directory().blobs.path(sha1)
    root = kachery_dir / "sha1"  # where every writer of blobs keeps its temp file
    root.mkdir(parents=True)
    dead = root / f".{sha1}.deadbeefdeadbeef.part"
    dead.write_bytes(b"partial")
    dead_before_its_first_byte = root / f".{sha1}.0badf00d0badf00d.part"  # killed between creating and locking it
    dead_before_its_first_byte.write_bytes(b"")
    live = root / f".{sha1}.cafecafecafecafe.part"
    live.write_bytes(b"partial, being written")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1],'rb'); fcntl.flock(f, fcntl.LOCK_EX);"
            " print('locked', flush=True); time.sleep(60)",
            str(live),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        kcl.store_text_local(data.decode())
        assert blob.read_bytes() == data
        assert not dead.exists()
        assert not dead_before_its_first_byte.exists()
        assert live.exists()
    finally:
        holder.kill()
        holder.wait()
    with open(live, "rb") as f:  # the lock died with its holder
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert sha1_of_file(blob) == sha1
