"""Replica scaling: 1, 2 and 3 API replicas on one PostgreSQL database and one SeaweedFS bucket behind haproxy
(tests/integration/replica_kit.py), each loaded by 8 client processes of their own identity.

For each count it reports the throughput of the 8 processes and the API processes' CPU per request (all replicas
together, divided by the requests they answered): flat CPU per request means no replica waits on another (no
shared hot row). Then 2 replicas pinned to one core and to two (sched_setaffinity of every thread of the API
processes; clients, haproxy, PostgreSQL and SeaweedFS stay unpinned): requests per second should grow with the
cores given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.integration.replica_kit import Replicas, client_env, running_replicas
from tests.servers import PostgresDatabases, SeaweedFS

from .samples import Samples
from .server_cost import PROCESSES, process_cpu_sec, run_processes
from .stack import SERVER_SETTINGS

MODES = ("store_json", "get_mutable")
MUTABLE_KEY = "@bench/replicas"


@contextmanager
def _replicas(work: Path, weed: SeaweedFS, postgres: PostgresDatabases, count: int) -> Iterator[Replicas]:
    s3 = weed.s3_settings(f"bench-replicas-{count}-{time.time_ns()}")
    with running_replicas(
        work / f"replicas-{count}", database_url=postgres.create(), s3=s3, settings=dict(SERVER_SETTINGS), count=count
    ) as replicas:
        yield replicas


def _client_envs(replicas: Replicas, work: Path, name: str) -> list[dict[str, str]]:
    identities = replicas.register_clients(PROCESSES, f"bench-{time.time_ns()}@example.org")
    envs = []
    for p, identity in enumerate(identities):
        directory = work / f"{name}-client-{p}"
        directory.mkdir(parents=True)
        envs.append(client_env(directory, replicas.url, **identity))
    return envs


def _jobs(mode: str, per_process: int) -> list[list[Any]]:
    count = per_process + 1  # the first warms the process up and is not counted
    if mode == "get_mutable":
        return [[MUTABLE_KEY] * count for _ in range(PROCESSES)]
    return [
        [{"bench": "replicas", "p": p, "i": i, "t": time.time_ns(), "pad": "x" * 200} for i in range(count)]
        for p in range(PROCESSES)
    ]


def _api_cpu(replicas: Replicas) -> float:
    return sum(process_cpu_sec(server.process.pid) for server in replicas.servers)


def _answered(replicas: Replicas) -> int:
    return sum(replicas.balancer.responses().values())


def _pin(replicas: Replicas, cpus: set[int]) -> None:
    """Every thread of every API process onto ``cpus`` (threads made later inherit it from their creator)."""
    for server in replicas.servers:
        for tid in os.listdir(f"/proc/{server.process.pid}/task"):
            os.sched_setaffinity(int(tid), cpus)


def _load(
    replicas: Replicas, envs: list[dict[str, str]], mode: str, per_process: int, work: Path
) -> tuple[float, float]:
    """(ms per operation of the 8 processes together, API CPU ms per request answered) for one run of ``mode``."""
    cpu, answered = _api_cpu(replicas), _answered(replicas)
    ms_per_op = run_processes(mode, _jobs(mode, per_process), envs, work)
    requests = _answered(replicas) - answered
    return ms_per_op, 1000 * (_api_cpu(replicas) - cpu) / max(requests, 1)


def replica_scaling(work: Path, per_process: int, repeats: int) -> dict[str, Any]:
    """Samples by name: ``{mode}-{n}`` (ms per operation with n replicas), ``cpu-{mode}-{n}`` (API CPU ms per
    request), ``pinned-{mode}-{cores}`` (ms per operation, 2 replicas on that many cores)."""
    out: dict[str, Samples] = {}

    def sample(name: str, label: str, unit: str) -> Samples:
        return out.setdefault(name, Samples(label, unit))

    work.mkdir(parents=True, exist_ok=True)
    weed = SeaweedFS(work / "weed")
    postgres = PostgresDatabases()
    cores = sorted(os.sched_getaffinity(0))
    try:
        for count in (1, 2, 3):
            with _replicas(work, weed, postgres, count) as replicas:
                envs = _client_envs(replicas, work, f"r{count}")
                _set_mutable(envs[0])
                for mode in MODES:
                    for _ in range(repeats):
                        ms, cpu = _load(replicas, envs, mode, per_process, work)
                        sample(f"{mode}-{count}", f"{mode}, {count} replica(s)", "ms").values.append(ms)
                        label = f"API CPU per request, {count} replica(s)"
                        sample(f"cpu-{mode}-{count}", label, "ms").values.append(cpu)
                if count == 2 and len(cores) >= 2:
                    for given in (1, 2):
                        _pin(replicas, set(cores[:given]))
                        for mode in MODES:
                            for _ in range(repeats):
                                ms, _cpu = _load(replicas, envs, mode, per_process, work)
                                label = f"{mode}, 2 replicas on {given} core(s)"
                                sample(f"pinned-{mode}-{given}", label, "ms").values.append(ms)
                    _pin(replicas, set(cores))
    finally:
        weed.stop()
        postgres.drop_all()
    return out


def _set_mutable(env: dict[str, str]) -> None:
    code = f"import kachery_cloud as kcl; kcl.set_mutable({MUTABLE_KEY!r}, 'a value')"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
