"""kachery-cloud-server start: first start, restart with the data kept, clean stops, no orphan processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import kachery_cloud as kcl

from ..servers import clean_env, descendants, free_port, healthy, pid_alive, start_server


def wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


def server_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``kachery-cloud-server ARGS`` in a clean environment."""
    return subprocess.run(
        [sys.executable, "-m", "api_server.cli", *args], env=clean_env(), capture_output=True, text=True, timeout=90
    )


def test_the_embedded_store_refuses_a_put_whose_body_does_not_match_its_sha1(tmp_path: Path) -> None:
    import base64
    import hashlib

    server = start_server(tmp_path / "server")
    try:
        assert "single PUTs checked by the store's SHA-1 check" in server.log()
        s3, bucket = server.s3_client()
        data = os.urandom(300_000)
        checksum = base64.b64encode(hashlib.sha1(data).digest()).decode()
        params = {"Bucket": bucket, "Key": "probe/object", "ChecksumSHA1": checksum}
        url = s3.generate_presigned_url("put_object", Params=params)
        headers = {"x-amz-checksum-sha1": checksum}
        wrong = requests.put(url, data=data[:-1] + b"!", headers=headers, timeout=30)
        assert wrong.status_code == 400 and "<Code>BadDigest</Code>" in wrong.text
        with pytest.raises(Exception, match=r"404|Not Found"):
            s3.head_object(Bucket=bucket, Key="probe/object")
        bad_header = requests.put(url, data=data, headers={"x-amz-checksum-sha1": "not base64!"}, timeout=30)
        assert bad_header.status_code in (400, 403)
        right = requests.put(url, data=data, headers=headers, timeout=30)
        assert right.status_code == 200
        assert s3.get_object(Bucket=bucket, Key="probe/object")["Body"].read() == data
        plain = requests.put(s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "p"}), data=b"x")
        assert plain.status_code == 200  # no checksum header: nothing to check
    finally:
        server.stop()


def test_first_start_creates_everything_and_a_restart_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "server"
    server = start_server(data_dir)
    for name in ("server.db", "s3", "s3-credentials.json", "server.json"):
        assert (data_dir / name).exists(), name
    assert (data_dir / "s3-credentials.json").stat().st_mode & 0o077 == 0
    children = server.child_pids()
    assert len(children) == 1  # the embedded store (nanio with the SHA-1 check)
    monkeypatch.setenv("KACHERY_CLOUD_API_URL", server.url)
    info = kcl.init(quiet=True)
    assert info["default_project_id"] == "default"
    server.admin("create-project", "kept", "--label", "survives restarts")
    assert server.stop() == 0
    assert wait_gone(children) == []
    assert not (data_dir / "server.json").exists()

    again = start_server(data_dir, port=server.port)
    try:
        from kachery_cloud._connection import forget_clients

        forget_clients()
        info = kcl.get_client_info()  # still registered: the same database and the same key
        assert info["client_id"] == kcl.get_client_id()
        assert "kept" in again.admin("list-projects").stdout
        owners = [line for line in again.admin("list-users").stdout.splitlines() if "local owner" in line]
        assert len(owners) == 1
    finally:
        again.stop()


def test_sigint_stops_the_server_and_its_store(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server")
    children = server.child_pids()
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=30) == 0
    assert wait_gone(children) == []


def test_kill_9_of_the_server_leaves_no_orphan_store(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server")
    children = server.child_pids()
    assert children
    server.process.kill()
    server.process.wait()
    assert wait_gone(children) == [], "nanio outlived the server"
    # The stale pid file does not stop the next start.
    again = start_server(tmp_path / "server")
    again.stop()


def test_a_second_server_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server")
    try:
        result = server_cli("start", "--data-dir", str(tmp_path / "server"), "--port", str(free_port()))
        assert result.returncode == 1
        assert "another kachery-cloud-server is using" in result.stderr
        assert str(server.process.pid) in result.stderr
        assert healthy(server.url)
    finally:
        server.stop()


def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    server = start_server(tmp_path / "one")
    try:
        result = server_cli("start", "--data-dir", str(tmp_path / "two"), "--port", str(server.port))
        assert result.returncode == 1
        assert f"cannot listen on 127.0.0.1:{server.port}" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        server.stop()


def test_background_start_then_status_and_stop(tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    port = free_port()
    started = server_cli("start", "--background", "--data-dir", str(data_dir), "--port", str(port))
    assert started.returncode == 0, started.stderr
    assert f"http://127.0.0.1:{port}" in started.stdout
    pid = int(started.stdout.split("(pid ")[1].split(")")[0])
    try:
        assert requests.get(f"http://127.0.0.1:{port}/api/health").json()["status"] == "ok"
        status = server_cli("status", "--data-dir", str(data_dir))
        assert status.returncode == 0 and str(pid) in status.stdout
        twice = server_cli("start", "--background", "--data-dir", str(data_dir), "--port", str(port))
        assert twice.returncode == 0 and f"already running at http://127.0.0.1:{port} (pid {pid})" in twice.stdout
        children = descendants(pid)
        stopped = server_cli("stop", "--data-dir", str(data_dir))
        assert stopped.returncode == 0, stopped.stderr
        assert not pid_alive(pid)
        assert wait_gone(children) == []
        status = server_cli("status", "--data-dir", str(data_dir))
        assert status.returncode == 1
        again = server_cli("stop", "--data-dir", str(data_dir))
        assert again.returncode == 0 and "no server is running" in again.stdout
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_server_for_other_machines_names_its_own_url_its_store_and_its_data_dir(tmp_path: Path) -> None:
    """start/status/stop name this process's URL (not the public one), the store's URL for clients, and the data
    directory, and say how to stop it; the store listens on the port asked for, where the API listens."""
    data_dir, port, store_port = tmp_path / "lab", free_port(), free_port()
    public = "http://127.0.0.2:9999"  # a balancer's, say: not this process's
    started = server_cli(
        *("start", "--background", "--data-dir", str(data_dir), "--host", "0.0.0.0", "--port", str(port)),
        *("--public-url", public, "--store-port", str(store_port)),
    )
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.split("(pid ")[1].split(")")[0])
    try:
        assert started.stdout.startswith(f"kachery-cloud-server running at http://127.0.0.1:{port} (pid {pid})")
        assert f"public URL {public}" in started.stdout
        assert f"embedded store for clients at http://127.0.0.2:{store_port}" in started.stdout
        assert f"data in {data_dir}" in started.stdout
        assert f"stop it with: kachery-cloud-server stop --data-dir {data_dir}" in started.stdout
        # The store answers on every address, as the API does (an unsigned request: refused, but answered).
        assert requests.get(f"http://127.0.0.2:{store_port}/", timeout=10).status_code in (400, 403)
        status = server_cli("status", "--data-dir", str(data_dir))
        assert f"http://127.0.0.1:{port} (pid {pid})" in status.stdout and str(data_dir) in status.stdout
        stopped = server_cli("stop", "--data-dir", str(data_dir))
        assert stopped.returncode == 0 and f"stopped the server at http://127.0.0.1:{port}" in stopped.stdout
        assert f"data in {data_dir}" in stopped.stdout
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_an_external_store_from_the_settings_file_is_used(tmp_path: Path) -> None:
    # A nanio started by the test stands in for an external S3 service; the server must not start its own.
    port = free_port()
    store = subprocess.Popen(
        [sys.executable, "-m", "nanio", "serve", "--data-dir", str(tmp_path / "ext"), "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log", "--log-level", "warning"],
        env={**clean_env(), "NANIO_ACCESS_KEY": "extak", "NANIO_SECRET_KEY": "extsecret"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _port_open(port):
            time.sleep(0.05)
        settings = {
            "s3": {
                "endpoint_url": f"http://127.0.0.1:{port}",
                "bucket": "lab-bucket",
                "access_key_id": "extak",
                "secret_access_key": "extsecret",
                "key_prefix": "kachery/",
            }
        }
        server = start_server(tmp_path / "server", settings=settings)
        try:
            assert server.child_pids() == []  # no embedded store
            assert not (tmp_path / "server" / "s3").exists()
            assert (tmp_path / "ext" / "lab-bucket").is_dir()  # the bucket was created on the external store
        finally:
            server.stop()
    finally:
        store.terminate()
        store.wait()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_stale_pid_file_never_makes_stop_signal_a_stranger(tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    data_dir.mkdir()
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        # What a kill -9 leaves behind, with the pid since reused by an unrelated process.
        (data_dir / "server.json").write_text(f'{{"pid": {stranger.pid}, "url": "http://127.0.0.1:1"}}')
        status = server_cli("status", "--data-dir", str(data_dir))
        assert status.returncode == 1
        stopped = server_cli("stop", "--data-dir", str(data_dir))
        assert "no server is running" in stopped.stdout
        time.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
