"""kill -9 in the middle of writing: nothing partial is ever visible, and the next attempt succeeds."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from kachery_cloud._context import local_directory
from kachery_cloud.protocol.hashing import sha1_of_file

from ..helpers import run_python

SIZE = 512 << 20


def partial_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*.part") if p.is_file()] if directory.exists() else []


def test_kill_during_a_large_store_leaves_no_partial_blob(tmp_path: Path, kachery_dir: Path) -> None:
    source = tmp_path / "large.bin"
    with open(source, "wb") as f:  # sparse: fast to create and to hash, but copied as real bytes
        f.truncate(SIZE)
    expected_hash = sha1_of_file(source)
    blob = local_directory().blobs.path(expected_hash)

    writer = subprocess.Popen(
        [sys.executable, "-c", f"import kachery_cloud as kcl; kcl.store_file_local({str(source)!r})"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while time.monotonic() < deadline and writer.poll() is None:
        partial = [p for p in partial_files(kachery_dir / "sha1") if p.stat().st_size >= 1 << 20]
        if partial:
            break
        time.sleep(0.001)
    assert partial, "the writer finished before it could be killed mid-copy"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert not blob.exists(), "a blob appeared although its writer was killed mid-copy"
    assert 0 < partial[0].stat().st_size < SIZE  # the leftover is a temp file, not a blob

    result = run_python(f"import kachery_cloud as kcl; print(kcl.store_file_local({str(source)!r}))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sha1://{expected_hash}"
    assert sha1_of_file(blob) == expected_hash
    assert partial_files(kachery_dir / "sha1") == []  # the dead writer's temp file was swept


MUTABLE_WRITER = r"""
import kachery_cloud as kcl
values = ["a" * 2_000_000, "b" * 3_000_000]
kcl.set_mutable_local("@crash/value", values[0])
print("ready", flush=True)
i = 0
while True:
    i += 1
    kcl.set_mutable_local("@crash/value", values[i % 2])
"""


def test_kill_during_mutable_writes_never_exposes_a_torn_value(kachery_dir: Path) -> None:
    import kachery_cloud as kcl

    rng = random.Random(7)
    for _ in range(5):
        writer = subprocess.Popen([sys.executable, "-c", MUTABLE_WRITER], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        value = kcl.get_mutable_local("@crash/value")
        assert value in ("a" * 2_000_000, "b" * 3_000_000)
    kcl.set_mutable_local("@crash/value", "after")
    assert kcl.get_mutable_local("@crash/value") == "after"
