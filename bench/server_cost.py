"""What the API server costs: CPU time of the API process per call (every request the call makes; the embedded
store is another process and is not counted), and the throughput of 8 client processes next to 8 processes of
raw boto3 on the same bucket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .figures import _credentials
from .samples import Samples
from .stack import Stack

PROCESSES = 8


def process_cpu_sec(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads; not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_call(stack: Stack, calls: int, blocks: int) -> dict[str, Samples]:
    """Milliseconds of API-process CPU per call, one sample per block of ``calls`` calls."""
    import kachery_cloud as kcl

    pid = stack.server.process.pid
    writer = stack.fresh_client()
    kcl.set_mutable("@bench/cpu", "a value")
    stored = [kcl.store_json({"bench": "cpu", "i": i, "t": time.time_ns()}) for i in range(calls * blocks + 1)]
    out: dict[str, Samples] = {}

    def measure(name: str, label: str, call: Callable[[int], object], before_block: Callable[[], None]) -> None:
        samples = out[name] = Samples(label, "ms")
        counter = iter(range(10**9))
        call(next(counter))  # connections and caches of this client warm, as in a running program
        for _ in range(blocks):
            before_block()
            started = process_cpu_sec(pid)
            for _ in range(calls):
                call(next(counter))
            samples.values.append(1000 * (process_cpu_sec(pid) - started) / calls)

    def nothing() -> None:
        return None

    measure("get_mutable", "API CPU per get_mutable", lambda _i: kcl.get_mutable("@bench/cpu"), nothing)
    measure("store_json", "API CPU per store_json", lambda i: kcl.store_json({"bench": "cpu store", "i": i}), nothing)
    # A find or a miss needs a cache without the blob: each block asks from a fresh client directory.
    readers: list[Path] = []

    def fresh_reader() -> None:
        readers.append(stack.fresh_client())

    fresh_reader()
    measure("find", "API CPU per load_file_info (find)", lambda i: kcl.load_file_info(stored[i]), fresh_reader)
    measure("load_json", "API CPU per load_json (cache miss)", lambda i: kcl.load_json(stored[i]), fresh_reader)
    for directory in [writer, *readers]:
        stack.drop_client(directory)
    return out


def parallel_throughput(stack: Stack, per_process: int, tmp: Path) -> dict[str, Samples]:
    """Operations per second of 8 processes at once: store_json next to boto3 put_object of the same bytes, and
    load_json (cache miss) next to get_object, on the same bucket."""
    import kachery_cloud as kcl

    work = tmp / "parallel"
    work.mkdir(exist_ok=True)
    count = per_process + 1  # the first of each process warms it up and is not counted
    objects = [
        [{"bench": "parallel", "p": p, "i": i, "t": time.time_ns(), "pad": "x" * 200} for i in range(count)]
        for p in range(PROCESSES)
    ]
    keys = [[f"bench/parallel/{time.time_ns()}-{p}-{i}" for i in range(count)] for p in range(PROCESSES)]
    bodies = [
        [{"key": k, "body": json.dumps(o)} for k, o in zip(ks, os_, strict=True)]
        for ks, os_ in zip(keys, objects, strict=True)
    ]
    clients = [stack.fresh_client() for _ in range(PROCESSES)]
    # Milliseconds per operation of all processes together (1000 / operations per second).
    out = {
        "store_json": Samples(f"{PROCESSES} processes of store_json", "ms"),
        "put": Samples(f"{PROCESSES} processes of boto3 put_object", "ms"),
        "load_json": Samples(f"{PROCESSES} processes of load_json (cache miss)", "ms"),
        "get": Samples(f"{PROCESSES} processes of boto3 get_object", "ms"),
    }
    out["put"].values.append(_run_parallel(stack, "put", bodies, clients, work))
    out["store_json"].values.append(_run_parallel(stack, "store_json", objects, clients, work))
    # What the loaders load: the objects just stored, each process from an empty cache of its own.
    stack.use_client(clients[0])
    uris = [[kcl.store_json(o) for o in objects[p]] for p in range(PROCESSES)]
    loaders = [stack.fresh_client() for _ in range(PROCESSES)]
    out["get"].values.append(_run_parallel(stack, "get", keys, loaders, work))
    out["load_json"].values.append(_run_parallel(stack, "load_json", uris, loaders, work))
    for directory in clients + loaders:
        stack.drop_client(directory)
    return out


def _run_parallel(stack: Stack, mode: str, jobs: list[list[Any]], clients: list[Path], work: Path) -> float:
    """Milliseconds per operation of the processes together, from the common start to the last one's end."""
    access_key, secret_key = _credentials(stack)
    s3_env = {
        "BENCH_S3_ENDPOINT": stack.endpoint_url,
        "BENCH_S3_BUCKET": stack.bucket,
        "BENCH_S3_ACCESS_KEY_ID": access_key,
        "BENCH_S3_SECRET_ACCESS_KEY": secret_key,
    }
    return run_processes(mode, jobs, [{**stack.client_env(c), **s3_env} for c in clients], work)


def run_processes(mode: str, jobs: list[list[Any]], envs: list[dict[str, str]], work: Path) -> float:
    """Milliseconds per operation of ``bench.parallel_worker`` processes (one per share of ``jobs``, each with its
    environment) together, from their common start to the last one's end."""
    start_at = time.time() + 3.0 + 0.3 * len(jobs)  # after every process has imported and warmed up
    processes = []
    for p, (share, env) in enumerate(zip(jobs, envs, strict=True)):
        jobs_file = work / f"{mode}-{p}.json"
        jobs_file.write_text(json.dumps(share))
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.parallel_worker", mode, str(start_at), str(jobs_file)],
                env=env,
                stdout=subprocess.PIPE,
                cwd=Path(__file__).parent.parent,
            )
        )
    finished, done, late = [], 0, 0.0
    for process in processes:
        output, _ = process.communicate(timeout=600)
        if process.returncode != 0:
            raise AssertionError(f"a {mode} worker failed with exit code {process.returncode}")
        report = json.loads(output.decode().strip().splitlines()[-1])
        finished.append(report["finished_at"])
        done += report["done"]
        late = max(late, report["late_sec"])
    if late > 0.2:
        raise AssertionError(f"a {mode} worker was ready {late:.1f} s after the common start; start later")
    return 1000 * (max(finished) - start_at) / done
