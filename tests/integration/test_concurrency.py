"""Eight processes storing and loading the same content in one directory at once."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kachery_cloud.protocol.hashing import sha1_of_file

WORKERS = 8
ROUNDS = 6

# Each worker starts at the same instant, then stores and loads the same files (stored in one pass, hashed on
# the way, never locked), the same large texts (known hash, above the lock threshold: with locks, one writer
# at a time), the same small texts and pickles (never locked), and races on a mutable.
WORKER = r"""
import os, sys, time
import kachery_cloud as kcl
import kachery_cloud.local.blobs as blobs

files_dir, start_at, use_locks = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
if not use_locks:
    blobs.LOCK_MIN_BYTES = 1 << 62
while time.time() < start_at:
    pass
for i in range(ROUNDS):
    path = os.path.join(files_dir, f"file{i}.bin")
    uri = kcl.store_file_local(path)
    with open(path, "rb") as f:
        f.seek(12345)
        assert kcl.load_bytes(uri, 12345, 12400) == f.read(55), "range mismatch"
    big = f"large common text {i} " * 450_000  # ~9.5 MB
    assert kcl.load_text(kcl.store_text_local(big)) == big
    text_uri = kcl.store_text_local(f"common text {i % 3}")
    assert kcl.load_text(text_uri) == f"common text {i % 3}"
    pkl_uri = kcl.store_pkl_local({"round": i % 2, "values": list(range(1000))})
    assert kcl.load_pkl(pkl_uri)["round"] == i % 2
    kcl.set_mutable_local("@race/value", f"{os.getpid()}:{i}")
    value = kcl.get_mutable_local("@race/value")
    assert value is not None and value.count(":") == 1, value
print("done")
""".replace("ROUNDS", str(ROUNDS))


@pytest.mark.parametrize("use_locks", [True, False], ids=["with-locks", "without-locks"])
def test_eight_processes_storing_the_same_content(tmp_path: Path, kachery_dir: Path, use_locks: bool) -> None:
    files_dir = tmp_path / "sources"
    files_dir.mkdir()
    for i in range(ROUNDS):
        (files_dir / f"file{i}.bin").write_bytes(os.urandom(9 << 20))  # 9 MiB: above LOCK_MIN_BYTES
    start_at = time.time() + 2.0  # time for every interpreter to start and import
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(files_dir), str(start_at), "1" if use_locks else "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(WORKERS)
    ]
    results = [(w.wait(timeout=240), *w.communicate()) for w in workers]
    for code, out, err in results:
        assert code == 0 and out.strip() == "done", err

    stored = [p for p in (kachery_dir / "sha1").rglob("*") if p.is_file()]
    assert [p for p in stored if p.name.endswith(".part")] == []
    assert len(stored) == ROUNDS + ROUNDS + 3 + 2
    for blob in stored:
        assert sha1_of_file(blob) == blob.name
    for i in range(ROUNDS):
        source_hash = sha1_of_file(files_dir / f"file{i}.bin")
        assert any(p.name == source_hash for p in stored)
