"""Fault 1: kill -9 of clients in the middle of storing and loading, at random moments, many times.

Afterwards every file in the cache has its hash, every leftover temp file is removed by the next run, and
that next run stores and loads everything. Stores and loads go through a real API server and store, with
small thresholds so that inline, single-PUT, multipart and parallel ranged transfers all get killed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kachery_cloud as kcl
from kachery_cloud.protocol.hashing import sha1_of_file

from ..conftest import CLOUD_TEST_SETTINGS, point_client_at
from ..helpers import copy_identity, count_unloadable, switch_client
from ..servers import RunningServer, start_server
from .conftest import Figure, Figures

KIB, MIB = 1 << 10, 1 << 20
# Inline (small), one PUT (up to 1 MiB in the test settings), multipart (5 MiB parts), and ranged parallel
# downloads (16 MiB and more).
STORE_SIZES = [2 * KIB, 40 * KIB, 700 * KIB, 3 * MIB, 11 * MIB]
POOL_SIZES = [3 * KIB, 50 * KIB, 900 * KIB, 4 * MIB, 9 * MIB, 17 * MIB, 24 * MIB]

CHILD = r"""
import sys, time, kachery_cloud as kcl
mode, args = sys.argv[1], sys.argv[2:]
print("ready", flush=True)
started = time.monotonic()
if mode == "store":
    kcl.store_files(args, cache_locally=True)
else:
    for uri in args:
        kcl.load_file(uri)
print(f"done {time.monotonic() - started}", flush=True)  # one write: a kill cannot split it
"""


class KillTiming:
    """When to kill, so that kills land inside the operation: a random moment within how long the operations
    of this kind took when they were let finish (a fixed window missed most of them: only 36 of 200 landed)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.durations: dict[str, list[float]] = {"store": [], "load": []}

    def delay(self, mode: str) -> float:
        seen = sorted(self.durations[mode][-9:])
        typical = seen[len(seen) // 2] if seen else 0.5
        return self.rng.uniform(0.0, typical)

    def finished(self, mode: str, seconds: float) -> None:
        self.durations[mode].append(seconds)


class CacheChecker:
    """Counts cache files whose name is not their hash, hashing only what is new or changed since the last
    look (re-hashing the whole cache after each of 200 kills took most of the soak's time)."""

    def __init__(self, kachery_dir: Path) -> None:
        self.kachery_dir = kachery_dir
        self.checked: set[tuple[Path, int, int, int]] = set()

    def wrong(self) -> int:
        bad = 0
        for blob in cache_blobs(self.kachery_dir):
            st = blob.stat()
            key = (blob, st.st_ino, st.st_size, st.st_mtime_ns)
            if key in self.checked:
                continue
            if sha1_of_file(blob) == blob.name:
                self.checked.add(key)
            else:
                bad += 1
        return bad


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("kills"), settings=dict(CLOUD_TEST_SETTINGS))
    yield running
    running.stop()


def random_file(directory: Path, size: int, rng: random.Random) -> Path:
    path = directory / f"f{rng.getrandbits(64):016x}.bin"
    path.write_bytes(rng.randbytes(size))
    return path


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob(".*.part") if p.is_file()]


def cache_blobs(kachery_dir: Path) -> list[Path]:
    return [p for p in (kachery_dir / "sha1").rglob("*") if p.is_file() and not p.name.startswith(".")]


def test_clients_killed_at_random_moments_leave_a_sound_cache(
    server: RunningServer,
    kachery_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    soak: bool,
    figures: Figures,
) -> None:
    point_client_at(server, monkeypatch)
    kcl.init(quiet=True)
    rng = random.Random(int(os.environ.get("KACHERY_TEST_SEED", "8")))
    sources = tmp_path / "sources"
    sources.mkdir()
    pool = {kcl.store_file(str(random_file(sources, size, rng))): size for size in POOL_SIZES}
    kills = 200 if soak else 12
    started = time.monotonic()
    to_store: list[Path] = []
    mid_operation = {"store": 0, "load": 0}
    timing, cache = KillTiming(rng), CacheChecker(kachery_dir)
    finished_first = 0
    debris = wrong_hash = 0
    for i in range(kills):
        mode = "store" if i % 2 == 0 else "load"
        if mode == "store":
            batch = [random_file(sources, rng.choice(STORE_SIZES), rng) for _ in range(3)]
            to_store += batch
            args = [str(p) for p in batch]
        else:
            args = rng.sample(sorted(pool), 3)
            for uri in args:  # out of the cache, so that the load really downloads
                blob = kachery_dir / "sha1" / blob_path(uri)
                if blob.exists():
                    assert sha1_of_file(blob) == blob.name
                    blob.unlink()
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, mode, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(timing.delay(mode))
        os.kill(child.pid, signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        if out.startswith("done"):
            finished_first += 1
            timing.finished(mode, float(out.split()[1]))
        else:
            mid_operation[mode] += 1
            assert child.returncode == -signal.SIGKILL, err
        debris += len(temp_files(kachery_dir))  # left by this kill (earlier ones were swept by this child)
        # After every kill: nothing in the cache under a name that is not its hash.
        wrong_hash += cache.wrong()

    # The next run: stores everything the killed clients were storing, loads everything they were loading,
    # and removes what they left behind.
    for uri in pool:
        blob = kachery_dir / "sha1" / blob_path(uri)
        blob.unlink(missing_ok=True)
    script = (
        "import json, sys, kachery_cloud as kcl\n"
        "paths, pool = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "uris = kcl.store_files(paths, cache_locally=True)\n"
        "print(json.dumps({'uris': uris, 'loaded': [kcl.load_file(u) for u in pool + uris]}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps([str(p) for p in to_store]), json.dumps(sorted(pool))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    wrong_uris = sum(
        not uri.startswith(f"sha1://{sha1_of_file(path)}") for path, uri in zip(to_store, answer["uris"], strict=True)
    )
    unloaded = sum(
        loaded is None or sha1_of_file(Path(loaded)) != blob_path(uri).name
        for loaded, uri in zip(answer["loaded"], sorted(pool) + answer["uris"], strict=True)
    )
    left = temp_files(kachery_dir)
    wrong_hash += sum(sha1_of_file(blob) != blob.name for blob in cache_blobs(kachery_dir))

    # And into an empty cache with the same identity, every stored blob comes back from the server intact.
    copy_identity(kachery_dir, tmp_path / "fresh")
    switch_client(monkeypatch, tmp_path / "fresh", register=False)
    lost = count_unloadable(answer["uris"])
    figures.record(
        Figure(
            item="1 client kill -9 during store and load",
            runs=kills,
            faults=sum(mid_operation.values()),
            errors=wrong_uris + unloaded + len(left),
            data_lost=wrong_hash + lost,
            seconds=time.monotonic() - started,
            details={
                "killed_mid_store": mid_operation["store"],
                "killed_mid_load": mid_operation["load"],
                "finished_before_the_kill": finished_first,
                "temp_files_left_by_kills": debris,
                "temp_files_after_next_run": len(left),
                "files_stored_after": len(to_store),
            },
        )
    )
    assert left == [], f"temp files the next run did not remove: {left}"
    assert (wrong_hash, wrong_uris, unloaded, lost) == (0, 0, 0, 0)


def blob_path(uri: str) -> Path:
    sha1 = uri.removeprefix("sha1://").split("?")[0]
    return Path(sha1[0:2], sha1[2:4], sha1[4:6], sha1)
