"""Fault 2: the S3 server killed (-9) and restarted while blobs go up and come down.

Transfers either complete through retries or fail with a clear error once the retry budget is spent; no
blob is ever corrupt, on the server or in the cache. The store is the embedded one (nanio behind the SHA-1
check) run as a process of its own, so that the test can kill it and start it again on the same port.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kachery_cloud as kcl
from kachery_cloud.protocol.hashing import sha1_of_file

from ..conftest import CLOUD_TEST_SETTINGS, point_client_at
from ..helpers import blob_files, copy_identity, count_unloadable, switch_client
from ..servers import RunningServer, free_port, start_server
from .conftest import Figure, Figures

KIB, MIB = 1 << 10, 1 << 20
SIZES = [40 * KIB, 700 * KIB, 3 * MIB, 12 * MIB, 20 * MIB]  # inline, one PUT, multipart, ranged download

# A child client: store a fresh file, or load a stored blob into an empty cache entry; one JSON line each.
CHILD = r"""
import json, os, random, sys, time
import kachery_cloud as kcl
from pathlib import Path
from kachery_cloud.protocol.hashing import sha1_of_file
seed, rounds, sources = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
sizes = json.loads(sys.argv[4])
rng = random.Random(seed)
stored = []
cache = Path(os.environ["KACHERY_CLOUD_DIR"]) / "sha1"
for i in range(rounds):
    op = "store" if not stored or rng.random() < 0.5 else "load"
    started = time.monotonic()
    try:
        if op == "store":
            path = sources / f"s{seed}-{i}.bin"
            path.write_bytes(rng.randbytes(rng.choice(sizes)))
            uri = kcl.store_file(str(path))
            stored.append(uri)
            result = {"uri": uri, "sha1": sha1_of_file(path)}
        else:
            uri = rng.choice(stored)
            sha1 = uri[7:47]
            (cache / sha1[:2] / sha1[2:4] / sha1[4:6] / sha1).unlink(missing_ok=True)
            result = {"uri": uri, "sha1": sha1_of_file(Path(kcl.load_file(uri)))}
        print(json.dumps({"op": op, "ok": True, **result, "s": time.monotonic() - started}), flush=True)
    except Exception as e:
        print(json.dumps({"op": op, "ok": False, "type": type(e).__name__, "error": str(e),
                          "code": getattr(e, "error_code", ""), "s": time.monotonic() - started}), flush=True)
"""


class RestartableStore:
    """The embedded store's process (nanio + SHA-1 check) on a fixed port, to be killed and started again."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.access_key, self.secret_key = "kc" + secrets.token_hex(9), secrets.token_urlsafe(30)
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "NANIO_ACCESS_KEY": self.access_key, "NANIO_SECRET_KEY": self.secret_key}
        command = [sys.executable, "-m", "api_server.checked_store", str(self.data_dir), "127.0.0.1", str(self.port)]
        with open(self.data_dir.parent / "store.log", "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the store exited at start"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.02)
        raise AssertionError("the store did not start")

    def kill(self) -> None:
        """kill -9 the store if it runs (the test's last round may have left it killed)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def s3_settings(self) -> dict[str, str]:
        return {
            "endpoint_url": self.endpoint,
            "bucket": "kachery-cloud",
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RestartableStore, RunningServer]]:
    base = tmp_path_factory.mktemp("store-restarts")
    (base / "s3").mkdir()
    store = RestartableStore(base / "s3")
    server = start_server(base / "server", settings={**CLOUD_TEST_SETTINGS, "s3": store.s3_settings()})
    yield store, server
    server.stop()
    store.kill()


def run_child(seed: int, rounds: int, sources: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(seed), str(rounds), str(sources), json.dumps(SIZES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# What a client may say when the store stays away longer than its retry budget: that the store could not be
# reached, or the API server's 503 store_unavailable; never an internal error, a hash mismatch or a corrupt file.
CLEAR_FAILURES = ("the object store could not be reached", "the object store answered HTTP 5")


def clear(outcome: dict) -> bool:
    return outcome.get("code") == "store_unavailable" or any(p in outcome["error"] for p in CLEAR_FAILURES)


def test_store_killed_and_restarted_during_transfers(
    stack: tuple[RestartableStore, RunningServer],
    kachery_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    soak: bool,
    figures: Figures,
) -> None:
    store, server = stack
    point_client_at(server, monkeypatch)
    kcl.init(quiet=True)
    sources = tmp_path / "sources"
    sources.mkdir()
    rng = random.Random(int(os.environ.get("KACHERY_TEST_SEED", "2")))
    duration = 300.0 if soak else 10.0
    started = time.monotonic()
    children = [run_child(seed, 10_000, sources) for seed in (1, 2)]
    restarts = 0
    while time.monotonic() - started < duration:
        time.sleep(rng.uniform(0.2, 1.5))
        store.kill()
        time.sleep(rng.uniform(0.05, 2.0))  # within the clients' retry budget (about 4-8 s)
        store.start()
        restarts += 1
    outcomes = []
    for child in children:
        child.terminate()
        out, _ = child.communicate(timeout=60)
        outcomes += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    completed = [o for o in outcomes if o["ok"]]
    failed = [o for o in outcomes if not o["ok"]]
    unclear = [o for o in failed if not clear(o)]
    # What a client got back is what was stored.
    wrong = sum(not o["uri"].startswith(f"sha1://{o['sha1']}") for o in completed)

    # Every blob the clients were told was stored comes back intact, into an empty cache; and every blob in
    # the clients' own cache has its hash.
    copy_identity(kachery_dir, tmp_path / "fresh")
    corrupt = sum(sha1_of_file(blob) != blob.name for blob in blob_files(kachery_dir) if not blob.name.startswith("."))
    switch_client(monkeypatch, tmp_path / "fresh", register=False)
    lost = count_unloadable(sorted({o["uri"] for o in completed if o["op"] == "store"}))
    figures.record(
        Figure(
            item="2 S3 server kill -9 and restart during transfers",
            runs=len(outcomes),
            faults=restarts,
            errors=len(unclear) + wrong,
            data_lost=lost + corrupt,
            seconds=time.monotonic() - started,
            details={
                "completed": len(completed),
                "failed_clearly": len(failed),
                "stores": sum(o["op"] == "store" for o in completed),
                "loads": sum(o["op"] == "load" for o in completed),
            },
        )
    )
    assert unclear == [], f"failures without a clear message: {unclear[:5]}"
    assert len(completed) >= 2, "too few transfers ran to show anything"
    assert (wrong, lost, corrupt) == (0, 0, 0)


def test_a_store_down_longer_than_the_retry_budget_fails_clearly_then_recovers(
    stack: tuple[RestartableStore, RunningServer], kachery_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, server = stack
    point_client_at(server, monkeypatch)
    kcl.init(quiet=True)
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(300 * KIB))
    big.write_bytes(os.urandom(12 * MIB))
    store.kill()
    try:
        for path in (small, big):
            with pytest.raises(kcl.KacheryCloudError) as error:
                kcl.store_file(str(path))
            assert clear({"error": str(error.value), "code": getattr(error.value, "error_code", "")}), error.value
    finally:
        store.start()
    for path in (small, big):
        uri = kcl.store_file(str(path))
        assert uri.startswith(f"sha1://{sha1_of_file(path)}")
        blob = kachery_dir / "sha1" / uri[7:9] / uri[9:11] / uri[11:13] / uri[7:47]
        blob.unlink(missing_ok=True)
        assert count_unloadable([uri]) == 0
