"""A store and a load of one large file from another machine, next to the same on loopback.

"Another machine" is a network namespace with its own loopback and a veth pair to this host (tests/netns.py);
the server is the embedded default started with ``--host 0.0.0.0 --public-url http://<host address>:<port>``.
The baseline is the embedded default on loopback, with a client on this host. Each run stores a fresh file of
random bytes (``kachery-cloud-store``, which uploads without keeping a local copy), then loads it into an empty
client directory (``kachery-cloud-load``, which downloads and verifies it). Needs root.

    .venv/bin/python -m bench.cross_machine [--mib 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.netns import Machine, can_make_machines, machines
from tests.servers import RunningServer, clean_env, free_port, start_server

BIN = Path(sys.executable).parent


def _run(argv: list[str], client_dir: Path, machine: Machine | None) -> tuple[float, str]:
    env = clean_env(KACHERY_CLOUD_DIR=str(client_dir))
    command = machine.command(*argv) if machine else argv
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
    return elapsed, done.stdout.strip()


def _one_round(server: RunningServer, machine: Machine | None, work: Path, mib: int, n: int) -> tuple[float, float]:
    writer, reader = work / f"writer{n}", work / f"reader{n}"
    link = server.admin("invite", "default", "--role", "write").stdout.strip()
    for directory in (writer, reader):
        _run([str(BIN / "kachery-cloud-init"), "--invite", link], directory, machine)
        link = server.admin("invite", "default", "--role", "read").stdout.strip()
    data = work / f"data{n}.bin"
    with open(data, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    store_sec, uri = _run([str(BIN / "kachery-cloud-store"), str(data)], writer, machine)
    load_sec, _ = _run([str(BIN / "kachery-cloud-load"), uri.splitlines()[-1]], reader, machine)
    data.unlink()
    return store_sec, load_sec


def measure(mib: int, repeat: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kc-cross-machine-") as scratch, machines(1) as (machine,):
        root = Path(scratch)
        for name, remote in (("loopback", False), ("other machine", True)):
            port = free_port()
            settings = {"host": "0.0.0.0", "public_url": f"http://{machine.host_address}:{port}"} if remote else {}
            server = start_server(root / f"server-{port}", settings=settings, port=port)
            try:
                rounds = [
                    _one_round(server, machine if remote else None, root, mib, n + (100 if remote else 0))
                    for n in range(repeat)
                ]
            finally:
                server.stop()
            stores, loads = [r[0] for r in rounds], [r[1] for r in rounds]
            results[name] = {"store_sec": statistics.median(stores), "load_sec": statistics.median(loads)}
            print(f"{name}: store {stores} s, load {loads} s", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=200, help="file size in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per setup (the median is reported)")
    args = parser.parse_args()
    why_not = can_make_machines()
    if why_not:
        sys.exit(f"cannot make another machine here: {why_not}")
    results = measure(args.mib, args.repeat)
    local, remote = results["loopback"], results["other machine"]
    print(f"| {args.mib} MiB, median of {args.repeat} | loopback | other machine (netns + veth) | ratio |")
    print("|---|---|---|---|")
    for key, label in (("store_sec", "store"), ("load_sec", "load")):
        rate_local, rate_remote = args.mib / local[key], args.mib / remote[key]
        print(
            f"| {label} | {local[key]:.2f} s ({rate_local:.0f} MiB/s) | {remote[key]:.2f} s ({rate_remote:.0f} MiB/s)"
            f" | {remote[key] / local[key]:.2f}x the time |"
        )


if __name__ == "__main__":
    main()
