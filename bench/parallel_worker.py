"""One of the processes of the concurrency figures (bench/server_cost.py): waits for the common start time, does
its share of one kind of operation, and prints when it finished.

    python -m bench.parallel_worker MODE START_AT JOBS_FILE

MODE: store_json | load_json | get_mutable (kachery-cloud, client directory from KACHERY_CLOUD_DIR) or put | get
(boto3 on the bucket of BENCH_S3_ENDPOINT / BENCH_S3_BUCKET, keys in BENCH_S3_ACCESS_KEY_ID /
BENCH_S3_SECRET_ACCESS_KEY).
JOBS_FILE holds a JSON list: objects to store, URIs to load, mutable keys to read, or object keys to PUT or GET.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any


def main(argv: list[str]) -> int:
    mode, start_at, jobs_file = argv[0], float(argv[1]), argv[2]
    with open(jobs_file) as f:
        jobs: list[Any] = json.load(f)
    run = _operation(mode)
    run(jobs[0])  # connections, imports and the first request out of the way, as in a running program
    jobs = jobs[1:]
    while time.time() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.time())))
    late = time.time() - start_at  # ready only after the common start: the throughput would be off
    for job in jobs:
        run(job)
    print(json.dumps({"finished_at": time.time(), "done": len(jobs), "late_sec": late}))
    return 0


def _operation(mode: str) -> Callable[[Any], object]:
    if mode in ("store_json", "load_json", "get_mutable"):
        import kachery_cloud as kcl

        return {"store_json": kcl.store_json, "load_json": kcl.load_json, "get_mutable": kcl.get_mutable}[mode]
    from .stack import boto3_client

    s3 = boto3_client(
        os.environ["BENCH_S3_ENDPOINT"], os.environ["BENCH_S3_ACCESS_KEY_ID"], os.environ["BENCH_S3_SECRET_ACCESS_KEY"]
    )
    bucket = os.environ["BENCH_S3_BUCKET"]
    if mode == "put":
        return lambda job: s3.put_object(Bucket=bucket, Key=job["key"], Body=job["body"].encode())
    if mode == "get":
        return lambda key: s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
