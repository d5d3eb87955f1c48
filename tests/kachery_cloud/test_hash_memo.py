"""The hash memo: an unchanged file is not read again; a changed one always is."""

import os
from pathlib import Path

import kachery_cloud as kcl
from kachery_cloud.protocol.hashing import sha1_of_bytes

from ..helpers import bytes_read_by_this_process


def test_storing_an_unchanged_large_file_again_reads_nothing(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(1 << 20) * 64)  # 64 MiB
    before = bytes_read_by_this_process()
    uri = kcl.store_file_local(source)
    first = bytes_read_by_this_process() - before
    assert 64 << 20 <= first < 65 << 20  # read exactly once: hashed while copied
    before = bytes_read_by_this_process()
    assert kcl.store_file_local(source, label="again") == uri + "?label=again"
    assert bytes_read_by_this_process() - before < 1 << 20
    before = bytes_read_by_this_process()
    kcl.link_file(source)
    assert bytes_read_by_this_process() - before < 1 << 20


def test_a_file_rewritten_with_the_same_size_and_restored_mtime_is_hashed_again(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    first = os.urandom(2 << 20)
    source.write_bytes(first)
    uri1 = kcl.store_file_local(source)
    st = source.stat()
    second = os.urandom(2 << 20)
    with open(source, "r+b") as f:  # same inode, same size
        f.write(second)
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p or touch -d would do
    uri2 = kcl.store_file_local(source)
    assert uri1 == f"sha1://{sha1_of_bytes(first)}"
    assert uri2 == f"sha1://{sha1_of_bytes(second)}"
    assert kcl.load_bytes(uri2) == second


def test_small_files_are_not_memoized(tmp_path: Path, kachery_dir: Path) -> None:
    source = tmp_path / "small.txt"
    source.write_text("small")
    kcl.store_file_local(source)
    assert not (kachery_dir / "hash_memo").exists()
