"""Store and load of one big file through the embedded server (nanio + SQLite) next to raw boto3 on the same
bucket, in the same run:

- store (cold: new content, empty hash memo) vs ``hashlib.sha1`` of the file + boto3 ``upload_file``;
- load into an empty cache vs boto3 ``download_file``.

Each repetition uses new content (the first bytes change), so nothing is deduplicated. Prints seconds
(median, min-max) and the ratios kachery-cloud / boto3.

    .venv/bin/python bench/cloud_transfer.py [SIZE_MIB] [REPEATS]      # default 1024 MiB, 3 repeats
"""

from __future__ import annotations

import functools
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MIB = 1 << 20


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        remaining = size
        block = os.urandom(16 * MIB)
        while remaining > 0:
            n = min(remaining, len(block))
            f.write(block[:n])
            remaining -= n
            block = block[1:] + block[:1]  # cheap variation, so no two blocks are equal


def sha1_file(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def sha1_and_upload(s3, source: Path, bucket: str, key: str) -> None:
    sha1_file(source)
    s3.upload_file(str(source), bucket, key)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(times: list[float]) -> str:
    return f"{statistics.median(times):6.2f} s ({min(times):.2f}-{max(times):.2f})"


def main() -> None:
    from tests.servers import start_server

    size = int(sys.argv[1]) * MIB if len(sys.argv) > 1 else 1024 * MIB
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results: dict[str, list[float]] = {k: [] for k in ("boto3_store", "kc_store", "boto3_load", "kc_load")}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp_name:
        tmp = Path(tmp_name)
        server = start_server(tmp / "server")
        try:
            s3, bucket = server.s3_client()
            os.environ.update(KACHERY_CLOUD_API_URL=server.url, KACHERY_CLOUD_QUIET="1")
            import kachery_cloud as kcl
            from kachery_cloud._connection import forget_clients

            source = tmp / "big.bin"
            write_random_file(source, size)
            for rep in range(repeats):
                with open(source, "r+b") as f:  # new content each repetition
                    f.write(f"repetition {rep} {time.time()}".encode())
                os.sync()
                key, target = f"bench/{rep}", tmp / "downloaded.bin"
                results["boto3_store"].append(timed(functools.partial(sha1_and_upload, s3, source, bucket, key)))
                results["boto3_load"].append(timed(functools.partial(s3.download_file, bucket, key, str(target))))
                target.unlink()
                s3.delete_object(Bucket=bucket, Key=key)

                os.environ["KACHERY_CLOUD_DIR"] = str(tmp / f"client-{rep}")
                forget_clients()
                kcl.init(quiet=True)
                started = time.perf_counter()
                uri = kcl.store_file(source)
                results["kc_store"].append(time.perf_counter() - started)
                os.environ["KACHERY_CLOUD_DIR"] = str(tmp / f"reader-{rep}")
                forget_clients()
                kcl.init(quiet=True)
                results["kc_load"].append(timed(functools.partial(kcl.load_file, uri)))
                for directory in (f"client-{rep}", f"reader-{rep}"):
                    os.system(f"rm -rf {tmp / directory}")
        finally:
            server.stop()
    print(f"{size // MIB} MiB, {repeats} repetitions, embedded nanio on loopback; median (min-max)")
    kc_store, kc_load = summary(results["kc_store"]), summary(results["kc_load"])
    print(f"  store  kachery-cloud {kc_store}   sha1 + boto3 upload_file {summary(results['boto3_store'])}")
    print(f"  load   kachery-cloud {kc_load}   boto3 download_file      {summary(results['boto3_load'])}")
    store_ratio = statistics.median(results["kc_store"]) / statistics.median(results["boto3_store"])
    load_ratio = statistics.median(results["kc_load"]) / statistics.median(results["boto3_load"])
    print(f"  ratios (kachery-cloud / boto3): store {store_ratio:.2f}, load {load_ratio:.2f}")


if __name__ == "__main__":
    main()
