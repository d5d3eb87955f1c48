"""Latency of one signed API call (GET /api/clients/me) next to an unsigned one (GET /api/health) on the
same embedded server, in the same run. Prints medians and p95 over N calls.

    .venv/bin/python bench/api_roundtrip.py [N]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def percentiles(fn, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[n // 2] * 1000, times[int(n * 0.95)] * 1000


def main() -> None:
    from tests.servers import start_server

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "server")
        try:
            os.environ.update(KACHERY_CLOUD_DIR=f"{tmp}/client", KACHERY_CLOUD_API_URL=server.url)
            import kachery_cloud as kcl
            from kachery_cloud._connection import api_client

            kcl.init(quiet=True)
            client = api_client()
            session = requests.Session()
            for _ in range(20):  # warm up connections and caches
                client.call("GET", "/api/clients/me")
                session.get(f"{server.url}/api/health")
            raw = percentiles(lambda: session.get(f"{server.url}/api/health").json(), n)
            signed = percentiles(lambda: client.call("GET", "/api/clients/me"), n)
        finally:
            server.stop()
    print(f"unsigned GET /api/health    p50 {raw[0]:.2f} ms  p95 {raw[1]:.2f} ms")
    print(f"signed GET /api/clients/me  p50 {signed[0]:.2f} ms  p95 {signed[1]:.2f} ms  ({signed[0] / raw[0]:.1f}x)")


if __name__ == "__main__":
    main()
