"""Usage is counted in the server's memory and written in batches (api_server/services/usage_meter.py): no
request writes a counter row itself, every request is counted once, and a graceful stop writes what is pending."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from ..conftest import point_client_at
from ..servers import RunningServer, start_server


def requests_counted(report: dict) -> int:
    return sum(day["requests"] for day in report["days"])


def test_concurrent_requests_are_each_counted_once(cloud_client: RunningServer) -> None:
    import kachery_cloud as kcl

    kcl.set_mutable("@usage/key", "value")
    before = requests_counted(cloud_client.settled_usage())
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(25):
                assert kcl.get_mutable("@usage/key") == "value"
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert requests_counted(cloud_client.settled_usage()) - before == 100


def test_counts_wait_in_memory_and_a_graceful_stop_writes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kachery_cloud as kcl

    # An interval longer than the test: only the stop can write these counts.
    server = start_server(tmp_path / "server", settings={"usage_flush_interval_sec": 3600})
    try:
        point_client_at(server, monkeypatch)
        kcl.init(quiet=True)
        uri = kcl.store_json({"counted": "later"})
        for _ in range(5):
            assert kcl.get_mutable("@usage/none") is None
        # Written nowhere yet: the requests did not touch the counter rows (the store did change stored bytes,
        # which is kept in the storing transaction).
        waiting = server.settled_usage()
        assert requests_counted(waiting) == 0
        assert sum(day["bytes_in"] for day in waiting["days"]) == 0
        assert waiting["stored_bytes"] == len(b'{"counted":"later"}')
    finally:
        assert server.stop() == 0
    written = server.settled_usage()
    assert requests_counted(written) == 6  # the store and the five reads
    assert sum(day["bytes_in"] for day in written["days"]) == len(b'{"counted":"later"}')
    assert uri.startswith("sha1://")


def test_counts_older_than_one_interval_survive_a_kill_9(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """doc/server.md: a server killed with kill -9 loses at most its last interval's counts."""
    import kachery_cloud as kcl

    server = start_server(tmp_path / "server")  # the tests' short interval (tests/servers.py)
    try:
        point_client_at(server, monkeypatch)
        kcl.init(quiet=True)
        for _ in range(7):
            assert kcl.get_mutable("@usage/none") is None
        counted = requests_counted(server.settled_usage())  # init's requests too
        assert counted >= 7
    finally:
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=30)
    assert requests_counted(server.settled_usage()) == counted
