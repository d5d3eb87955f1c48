"""Local store vs. doing the same work by hand, in one run on one disk.

    python bench/local_store.py [--big-mib 1024] [--small-count 5000] [--repeat 3]

Baselines: a 1 GiB file stored with ``store_file_local`` vs ``hashlib.sha1`` of the file plus
``shutil.copyfile`` (what any content-addressed cache must at least do); the same file stored a second
time (the hash memo should make it nearly free); N files of 4 KiB stored one by one vs the same
hash-and-copy loop. Prints a table of medians with ratios and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hash_and_copy(source: Path, target_dir: Path) -> None:
    digest = hashlib.sha1()
    with open(source, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    shutil.copyfile(source, target_dir / digest.hexdigest())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small-count", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ["KACHERY_CLOUD_QUIET"] = "1"
    import kachery_cloud as kcl

    work = Path(tempfile.mkdtemp(prefix="kc-bench-", dir=os.environ.get("BENCH_DIR")))
    rows: dict[str, dict[str, list[float]]] = {}
    try:
        big = work / "big.bin"
        with open(big, "wb") as f:
            for _ in range(args.big_mib):
                f.write(os.urandom(1 << 20))
        small_dir = work / "small"
        small_dir.mkdir()
        small = [small_dir / f"{i}.bin" for i in range(args.small_count)]
        for path in small:
            path.write_bytes(os.urandom(4096))

        def record(name: str, ours: Callable[[], object], base: Callable[[], object]) -> None:
            entry = rows.setdefault(name, {"ours": [], "base": []})
            entry["base"].append(timed(base))
            entry["ours"].append(timed(ours))

        for rep in range(args.repeat):
            store_dir, base_dir = work / f"kc{rep}", work / f"base{rep}"
            base_dir.mkdir()
            os.environ["KACHERY_CLOUD_DIR"] = str(store_dir)
            record(
                f"{args.big_mib} MiB: store_file_local (cold)",
                lambda: kcl.store_file_local(big),
                partial(hash_and_copy, big, base_dir),
            )
            record(
                f"{args.big_mib} MiB: second store (unchanged)",
                lambda: kcl.store_file_local(big),
                partial(hash_and_copy, big, base_dir),
            )
            record(
                f"{args.small_count} x 4 KiB: store_file_local",
                lambda: [kcl.store_file_local(p) for p in small],
                partial(lambda d: [hash_and_copy(p, d) for p in small], base_dir),
            )
            shutil.rmtree(store_dir)
            shutil.rmtree(base_dir)
    finally:
        shutil.rmtree(work)

    print(f"{'benchmark':45} {'ours (s)':>10} {'baseline (s)':>13} {'ratio':>7}  spread of ours")
    results = []
    for name, values in rows.items():
        ours, base = statistics.median(values["ours"]), statistics.median(values["base"])
        spread = f"{min(values['ours']):.3f}-{max(values['ours']):.3f}"
        print(f"{name:45} {ours:10.3f} {base:13.3f} {ours / base:7.2f}  {spread}")
        results.append({"name": name, "ours_s": values["ours"], "baseline_s": values["base"], "ratio": ours / base})
    out = Path(__file__).parent / "results" / f"local_store-{time.strftime('%Y%m%d-%H%M%S')}.json"
    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
