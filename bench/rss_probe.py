"""One client operation in a process of its own, so that its peak resident memory (VmHWM) is its own.
Prints one JSON line: ``{"peak_mib": ..., ...}``. Run by bench/figures.py:

    rss_probe.py store FILE | load URI | idle
    rss_probe.py store-files LIST OUT | load-files LIST   (LIST: paths or URIs, one a line; OUT: the URIs)
    rss_probe.py boto3-upload FILE ENDPOINT BUCKET ACCESS_KEY SECRET_KEY KEY
    rss_probe.py boto3-download TARGET ENDPOINT BUCKET ACCESS_KEY SECRET_KEY KEY
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv: list[str]) -> dict[str, Any]:
    command, args = argv[0], argv[1:]
    if command.startswith("boto3"):
        import boto3
        from botocore.config import Config

        target, endpoint, bucket, access_key, secret_key, key = args
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        if command == "boto3-upload":
            s3.upload_file(target, bucket, key)
        else:
            s3.download_file(bucket, key, target)
        return {"peak_mib": peak_mib()}
    import kachery_cloud as kcl

    if command == "store":
        return {"uri": kcl.store_file(args[0]), "peak_mib": peak_mib()}
    if command == "load":
        path = kcl.load_file(args[0])
        if path is None:
            raise SystemExit(f"{args[0]} not found")
        return {"path": path, "peak_mib": peak_mib()}
    if command == "store-files":  # timed here, so that the import and start of Python are not counted
        paths = Path(args[0]).read_text().splitlines()
        started = time.perf_counter()
        uris = kcl.store_files(paths)
        seconds = time.perf_counter() - started
        Path(args[1]).write_text("\n".join(uris) + "\n")
        return {"seconds": seconds, "peak_mib": peak_mib()}
    if command == "load-files":
        uris = Path(args[0]).read_text().splitlines()
        started = time.perf_counter()
        loaded = kcl.load_files(uris)
        seconds = time.perf_counter() - started
        if None in loaded or len(loaded) != len(uris):
            raise SystemExit("load_files did not bring back every file")
        return {"seconds": seconds, "peak_mib": peak_mib()}
    if command == "idle":
        return {"peak_mib": peak_mib()}
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
