"""Shared by the request-limit checks (test_request_limits, test_request_heads, test_connection_limits): servers
with small limits, raw sockets bound to 127.0.0.0/8 addresses, and how to read what the server answered."""

from __future__ import annotations

import http.client
import json
import math
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kachery_cloud.identity import ClientIdentity

from ..helpers import signed_headers
from ..servers import RunningServer, descendants, start_server
from .conftest import Figure, Figures

FIND, FIND_BODY = "/api/blobs/find", b'{"sha1s": [], "project_id": "default"}'
REGISTER, REGISTER_BODY = "/api/clients/register", b'{"label":"x"}'
JSON = {"Content-Type": "application/json"}
PER_ADDRESS, LONG_POLLS, MAX_PENDING = 5, 4, 20
MAX_HEAD_BYTES, MAX_HEADERS = 32 << 10, 100  # the defaults
HEAD_TIMEOUT, SLOW_HEAD_TIMEOUT, CONNECTIONS = 2.0, 30.0, 200
MIB = 1 << 20
PARTIAL_HEAD = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"


RATE = {"rate_limit_per_address": f"{PER_ADDRESS}/second", "rate_limit_per_client": "1000/second"}
SERVERS: dict[str, dict[str, Any]] = {
    "limited": {**RATE, "max_long_polls_per_client": LONG_POLLS},
    "proxied": {**RATE, "trusted_proxies": ["127.0.0.1"]},
    "google": {"registration": "google", "google_client_id": "test.apps.googleusercontent.com",
               "rate_limit_per_client": None, "rate_limit_per_address": None,
               "max_pending_registrations_per_address": MAX_PENDING},
    "heads": {"head_timeout_sec": HEAD_TIMEOUT},
    "crowded": {"max_connections_per_address": CONNECTIONS, "head_timeout_sec": SLOW_HEAD_TIMEOUT},
}  # fmt: skip


def _server_fixture(name: str) -> Any:
    """A module-scoped server with the settings ``SERVERS[name]``."""

    @pytest.fixture(scope="module", name=name)
    def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
        server = start_server(tmp_path_factory.mktemp(name), settings=SERVERS[name])
        try:
            yield server
        finally:
            server.stop()

    return running


limited, proxied, google, heads, crowded = (_server_fixture(name) for name in SERVERS)


# ------------------------------------------------------------------------------------------------ helpers


def call(
    server: RunningServer, method: str, target: str, body: bytes = b"", headers: dict | None = None, **kw: Any
) -> tuple[int, dict[str, str], Any]:
    """One request on a new connection from ``source`` (an address on this machine): status, headers, JSON."""
    source, timeout = kw.get("source", "127.0.0.1"), kw.get("timeout", 30)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(data) if data else None
    finally:
        conn.close()


def signed(server: RunningServer, identity: ClientIdentity, method: str, target: str, body: bytes = b"", **kw: Any):
    headers = {**JSON, **signed_headers(identity, method, target, body, server=server.url), **kw.pop("headers", {})}
    return call(server, method, target, body, headers, **kw)


def assert_rate_limited(answers: list[tuple[int, dict[str, str], Any]]) -> None:
    for status, headers, body in answers:
        assert status == 429 and body["error_code"] == "rate_limited", (status, body)
        assert int(headers["retry-after"]) >= 1, headers


def connect(server: RunningServer, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    sock = socket.socket()
    try:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", server.port))
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Answer:
    status: int | None = None  # None: no (complete) response
    body: dict = field(default_factory=dict)
    closed: bool = False  # the server closed (or reset) the connection


def read_answer(sock: socket.socket, timeout: float, *, until_closed: bool = False) -> Answer:
    """The response on ``sock`` within ``timeout``; with ``until_closed``, also wait for the server to close."""
    data, answer, deadline = b"", Answer(), time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        head, sep, rest = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if sep and answer.status is None and len(rest) >= (int(length.group(1)) if length else 0):
            answer.status = int(head.split()[1])
            answer.body = json.loads(rest) if rest else {}
            if not until_closed:
                return answer
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            break
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            answer.closed = True
            break
        data += chunk
    return answer


def readable(sock: socket.socket, timeout: float) -> bool:
    """Whether the server sent something or closed (poll: select() cannot take descriptors past 1023, and this
    process holds more than 1000 sockets)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def answered_or_closed(sock: socket.socket) -> bool:
    return readable(sock, 0)


def rss_kib(server: RunningServer) -> int:
    """Resident memory of the server process and its children (the embedded store), in KiB."""
    total = 0
    for pid in [server.process.pid, *descendants(server.process.pid)]:
        try:
            status = open(f"/proc/{pid}/status").read()  # noqa: SIM115 (a /proc file, read whole at once)
        except OSError:
            continue
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(found.group(1)) if found else 0
    return total


class HealthProbe:
    """GET /api/health from 127.0.0.1 in a loop while an attack runs: the statuses and latencies seen."""

    def __init__(self, server: RunningServer) -> None:
        self.server, self.stop, self.seen = server, threading.Event(), []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.seen.append(timed_health(self.server))
            self.stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def timed_health(server: RunningServer, source: str = "127.0.0.1") -> tuple[int, float]:
    start = time.monotonic()
    try:
        status = call(server, "GET", "/api/health", source=source, timeout=10)[0]
    except OSError:
        status = 0
    return status, time.monotonic() - start


def record(figures: Figures, item: str, runs: int, faults: int, *more: Any) -> None:
    """A Figure: ``more`` is (seconds, details) or (details,)."""
    seconds, details = more if len(more) == 2 else (0.0, *more)
    figures.record(Figure(item=item, runs=runs, faults=faults, seconds=seconds, details=details))


def served_bound(elapsed: float) -> int:
    """The most a moving window of PER_ADDRESS a second may let through in ``elapsed`` seconds."""
    return PER_ADDRESS * (math.ceil(elapsed) + 1)
