"""Fault 3: the API server killed (-9) and restarted while clients upload, append to a feed and run tasks.

Nothing a client was told is done gets lost: every URI a store returned loads, every acknowledged feed
message is in the feed once (numbered without gaps), every task a requester got a result for ran exactly
once. Clients ride out the restarts through their retries, or fail with a clear error. The server is the
embedded default (API + nanio + SQLite), restarted on the same port and data directory, as a user would.
"""

from __future__ import annotations

import collections
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

from ..conftest import CLOUD_TEST_SETTINGS, point_client_at
from ..helpers import copy_identity, count_unloadable, switch_client
from ..servers import RunningServer, start_server
from .conftest import Figure, Figures

KIB, MIB = 1 << 10, 1 << 20

# Each child loops over one kind of work and prints a JSON line for each thing the server acknowledged, or
# for each failure (the loop then goes on).
CHILD = r"""
import json, random, sys, time
import kachery_cloud as kcl
from pathlib import Path
kind, seed, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(seed)
feed = kcl.load_feed(arg) if kind == "append" else None
for i in range(1_000_000):
    try:
        if kind == "store":
            path = Path(arg) / f"s{seed}-{i}.bin"
            path.write_bytes(rng.randbytes(rng.choice([40 << 10, 700 << 10, 3 << 20, 12 << 20])))
            out = {"uri": kcl.store_file(str(path))}
        elif kind == "append":
            out = {"number": feed.append_message({"writer": seed, "i": i})}
        else:
            out = {"result": kcl.request_task("action", "test.echo", {"writer": seed, "i": i}, timeout_sec=120,
                                              quiet=True)}
        print(json.dumps({"i": i, "ok": True, **out}), flush=True)
    except Exception as e:
        print(json.dumps({"i": i, "ok": False, "type": type(e).__name__, "error": str(e)}), flush=True)
        time.sleep(0.2)
"""

# What a client may say when a restart outlasts its retries: that the server could not be reached (or the
# store behind it), never an internal error or a wrong answer.
CLEAR = ("cannot reach the kachery-cloud API server", "did not answer", "the object store could not be reached")


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[list[RunningServer]]:
    """[the running server], replaced in place on each restart."""
    holder = [start_server(tmp_path / "server", settings=dict(CLOUD_TEST_SETTINGS))]
    yield holder
    holder[0].stop()


def kill_and_restart(holder: list[RunningServer], downtime: float) -> None:
    old = holder[0]
    os.kill(old.process.pid, signal.SIGKILL)
    old.process.wait()
    time.sleep(downtime)
    holder[0] = start_server(old.data_dir, port=old.port)


def test_api_server_killed_and_restarted_during_uploads_appends_and_tasks(
    restartable: list[RunningServer],
    kachery_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    soak: bool,
    figures: Figures,
) -> None:
    point_client_at(restartable[0], monkeypatch)
    kcl.init(quiet=True)
    feed = kcl.create_feed()
    sources = tmp_path / "sources"
    sources.mkdir()
    run_log = tmp_path / "runs.log"
    env = {**os.environ, "RUN_LOG": str(run_log)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.task_worker", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None and worker.stdout.readline().strip() == "worker ready"
    children = {
        kind: subprocess.Popen(
            [sys.executable, "-c", CHILD, kind, str(seed), arg],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind, seed, arg in (("store", 1, str(sources)), ("append", 2, feed.uri), ("task", 3, ""))
    }
    rng = random.Random(int(os.environ.get("KACHERY_TEST_SEED", "3")))
    duration = 300.0 if soak else 12.0
    started = time.monotonic()
    restarts = 0
    while time.monotonic() - started < duration:
        time.sleep(rng.uniform(1.0, 3.0))
        kill_and_restart(restartable, rng.uniform(0.0, 1.0))
        restarts += 1
    time.sleep(3)  # what was in flight at the last restart completes
    outcomes: dict[str, list[dict]] = {}
    for kind, child in children.items():
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=60)
        outcomes[kind] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert worker.poll() is None, "the task worker did not survive the restarts"
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=60)

    failures = [o for kind in outcomes for o in outcomes[kind] if not o["ok"]]
    unclear = [o for o in failures if not any(phrase in o["error"] for phrase in CLEAR)]
    acked = {kind: [o for o in outcomes[kind] if o["ok"]] for kind in outcomes}

    # Uploads: every URI a store returned loads, intact, into an empty cache.
    copy_identity(kachery_dir, tmp_path / "fresh")
    switch_client(monkeypatch, tmp_path / "fresh", register=False)
    lost = count_unloadable([o["uri"] for o in acked["store"]])

    # Feed: numbered 0..n-1, every acknowledged append there once, at the number it was acknowledged with.
    messages = kcl.load_feed(feed.uri).get_messages()
    appended_twice = sum(count > 1 for count in collections.Counter(m["i"] for m in messages).values())
    lost += sum(o["number"] >= len(messages) or messages[o["number"]]["i"] != o["i"] for o in acked["append"])

    # Tasks: each acknowledged action returned its input, and no action ran twice (the run log).
    runs = collections.Counter(
        json.loads(line.split(" ", 1)[1])["i"] for line in run_log.read_text().splitlines() if line
    )
    wrong_results = sum(o["result"] != {"writer": 3, "i": o["i"]} for o in acked["task"])
    lost += sum(runs[o["i"]] == 0 for o in acked["task"])
    ran_twice = sum(count > 1 for count in runs.values())
    figures.record(
        Figure(
            item="3 API server kill -9 and restart during uploads, appends and tasks",
            runs=sum(len(v) for v in outcomes.values()),
            faults=restarts,
            errors=len(unclear) + appended_twice + wrong_results + ran_twice,
            data_lost=lost,
            seconds=time.monotonic() - started,
            details={
                "acknowledged": {kind: len(v) for kind, v in acked.items()},
                "failed_clearly": len(failures),
                "feed_messages": len(messages),
                "actions_run": sum(runs.values()),
            },
        )
    )
    assert unclear == [], f"failures without a clear message: {unclear[:5]}"
    assert all(acked.values()), f"some kind of work never got through: { {k: len(v) for k, v in acked.items()} }"
    assert (lost, appended_twice, wrong_results, ran_twice) == (0, 0, 0, 0)
