"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

    from kachery_cloud.identity import ClientIdentity

    from .servers import RunningServer


def run_python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with this process's environment (plus ``env``)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def blob_files(directory: Path) -> list[Path]:
    """Every file in the blob tree, temp files included."""
    return sorted(p for p in (directory / "sha1").rglob("*") if p.is_file())


def bytes_read_by_this_process() -> int:
    """The kernel's count of bytes this process has read (read/pread syscalls)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def switch_client(monkeypatch: pytest.MonkeyPatch, directory: Path, *, register: bool = True) -> None:
    """Make ``directory`` the client directory of this process (a second machine, in effect)."""
    import kachery_cloud as kcl
    from kachery_cloud._connection import forget_clients

    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(directory))
    forget_clients()
    if register:
        kcl.init(quiet=True)


def act_as(server: RunningServer, monkeypatch: pytest.MonkeyPatch, email: str) -> None:
    """Make this process a client registered for the user ``email`` (created as a member of a scratch project)."""
    import secrets

    from kachery_cloud._connection import forget_clients

    scratch = f"home-{secrets.token_hex(3)}"
    server.admin("create-project", scratch)
    server.admin("add-member", scratch, email)
    printed = server.admin("register-client", "--user", email).stdout
    for line in printed.splitlines():
        name, _, value = line.partition("=")
        monkeypatch.setenv(name, value)
    forget_clients()


BIN = Path(sys.executable).parent  # where the package's commands are installed


def run_cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run an installed command (``kachery-cloud``, ``kachery-cloud-store`` ...) as a user would."""
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, input=stdin, timeout=timeout)


def new_identity() -> ClientIdentity:
    """A fresh client key pair that no server knows."""
    from kachery_cloud.identity import ClientIdentity
    from kachery_cloud.protocol.keys import client_id_of, generate_private_key

    key = generate_private_key()
    return ClientIdentity(client_id=client_id_of(key), private_key=key)


_server_ids: dict[str, str] = {}


def server_id_of(url: str) -> str:
    """The id the server at ``url`` announces in /api/health (which signed requests must name)."""
    if url not in _server_ids:
        import requests

        _server_ids[url] = requests.get(f"{url}/api/health", timeout=30).json()["server_id"]
    return _server_ids[url]


def signed_headers(
    identity: ClientIdentity,
    http_method: str,
    http_target: str,
    body: bytes = b"",
    *,
    server: str = "",
    **overrides: object,
) -> dict[str, str]:
    """The X-Kachery-* headers of a request to the server at the URL ``server``, signed by hand; ``overrides``
    replace parts of the signed message (server_id, method, target, body_sha256, timestamp_ms, nonce, client_id)
    to forge it."""
    import secrets
    import time

    from kachery_cloud.protocol.request_signing import (
        HEADER_CLIENT_ID,
        HEADER_NONCE,
        HEADER_SERVER_ID,
        HEADER_SIGNATURE,
        HEADER_TIMESTAMP,
        body_digest,
        signing_message,
    )

    parts: dict = {
        "server_id": overrides.pop("server_id") if "server_id" in overrides else server_id_of(server),
        "method": http_method,
        "target": http_target,
        "body_sha256": body_digest(body),
        "timestamp_ms": int(time.time() * 1000),
        "nonce": secrets.token_hex(16),
        "client_id": identity.client_id,
    }
    parts.update(overrides)
    return {
        HEADER_CLIENT_ID: str(parts["client_id"]),
        HEADER_TIMESTAMP: str(parts["timestamp_ms"]),
        HEADER_NONCE: str(parts["nonce"]),
        HEADER_SERVER_ID: str(parts["server_id"]),
        HEADER_SIGNATURE: identity.sign(signing_message(**parts)),
    }


def copy_identity(source: Path, dest: Path) -> None:
    """Give the client directory ``dest`` the key pair of ``source``: the same client, with an empty cache."""
    from kachery_cloud.identity import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE

    dest.mkdir(parents=True, exist_ok=True)
    for name in (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE):
        (dest / name).write_bytes((source / name).read_bytes())


def count_unloadable(uris: list[str]) -> int:
    """How many of ``uris`` do not load (in this process's client directory) with the content they name."""
    import kachery_cloud as kcl
    from kachery_cloud.protocol.hashing import sha1_of_file
    from kachery_cloud.protocol.uri import parse_uri

    bad = 0
    for uri in uris:
        path = kcl.load_file(uri)  # None if the server no longer has it
        bad += path is None or sha1_of_file(Path(path)) != parse_uri(uri).sha1
    return bad
