"""Fault 4: KACHERY_CLOUD_DIR on a full disk (a small tmpfs): a clear error, nothing corrupt or half-written,
and everything works again once there is room."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import kachery_cloud as kcl
from kachery_cloud.protocol.hashing import sha1_of_file

from ..conftest import point_client_at
from ..servers import RunningServer, start_server
from .conftest import Figure, Figures

MIB = 1 << 20
DISK_BYTES = 40 * MIB


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 40 MiB tmpfs as the client directory (needs root, as the CI machine has)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    directory = mount_point / "kachery-cloud"
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(directory))
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path, leave: int) -> Path:
    """Fill the disk up to ``leave`` bytes of free space with a file outside the kachery-cloud tree."""
    filler = directory.parent / "filler"
    free = os.statvfs(directory.parent).f_bavail * os.statvfs(directory.parent).f_frsize
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def sound(directory: Path) -> tuple[list[Path], list[Path]]:
    """(blobs whose content is not their hash, temp files left behind)."""
    files = [p for p in (directory / "sha1").rglob("*") if p.is_file()] if (directory / "sha1").exists() else []
    wrong = [p for p in files if not p.name.startswith(".") and sha1_of_file(p) != p.name]
    temps = [p for p in directory.rglob(".*.part") if p.is_file()]
    return wrong, temps


def test_local_writes_on_a_full_disk_fail_clearly_and_leave_nothing_behind(
    small_disk: Path, tmp_path: Path, figures: Figures
) -> None:
    kept = kcl.store_text_local("stored while there was room")
    kcl.set_mutable_local("@exp/state", "before")
    filler = fill(small_disk, leave=2 * MIB)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * MIB))
    refusals = 0
    for attempt in (
        lambda: kcl.store_file_local(str(big)),
        lambda: kcl.store_npy_local(__import__("numpy").zeros(6 * MIB // 8)),
        lambda: kcl.set_mutable_local("@exp/state", "x" * (6 * MIB)),
    ):
        with pytest.raises(kcl.LocalFileError, match="no space left") as error:
            attempt()
        assert "KACHERY_CLOUD_DIR" in str(error.value)
        refusals += 1
    assert sound(small_disk) == ([], [])
    assert kcl.load_text(kept) == "stored while there was room"
    assert kcl.get_mutable_local("@exp/state") == "before"

    filler.unlink()  # room again: the same calls work
    uri = kcl.store_file_local(str(big))
    assert uri.startswith(f"sha1://{sha1_of_file(big)}")
    kcl.set_mutable_local("@exp/state", "after")
    assert kcl.get_mutable_local("@exp/state") == "after"
    assert sound(small_disk) == ([], [])
    figures.record(Figure(item="4 disk full: local store and mutables", runs=refusals, faults=refusals, errors=0))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("disk-full"))
    yield running
    running.stop()


def test_a_download_onto_a_full_disk_fails_clearly_and_caches_nothing(
    server: RunningServer, small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    point_client_at(server, monkeypatch)
    kcl.init(quiet=True)
    sizes = [300 << 10, 6 * MIB, 20 * MIB]  # one GET, one GET, ranged parallel GETs
    uris = []
    for size in sizes:
        source = tmp_path / f"{size}.bin"
        source.write_bytes(os.urandom(size))
        uris.append(kcl.store_file(str(source)))
    filler = fill(small_disk, leave=200 << 10)
    for uri in uris:
        with pytest.raises(kcl.LocalFileError, match="no space left"):
            kcl.load_file(uri)
        assert sound(small_disk) == ([], [])
    filler.unlink()
    for uri in uris:
        assert sha1_of_file(Path(kcl.load_file(uri))) == uri[7:47]
    assert sound(small_disk) == ([], [])
    figures.record(Figure(item="4 disk full: downloads", runs=len(uris), faults=len(uris), errors=0))
