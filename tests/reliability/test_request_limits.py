"""What a hostile network client can make the API server do: fresh keys and forged addresses do not dodge the rate
limits, pending registrations are capped per address, request heads are capped in size, count and time, open
connections are capped per address (and /api/health answers meanwhile), and long-polls are capped per client.
Every check talks to a real server process over real sockets, on 127.0.0.0/8 only."""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import math
import re
import resource
import secrets
import select
import socket
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kachery_cloud.identity import ClientIdentity
from kachery_cloud.protocol.feed_format import message_body, signed_bytes

from ..helpers import new_identity, signed_headers
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


# ------------------------------------------------------------------------------------------------ rate limits


def test_fresh_unregistered_keys_share_their_address_limit(limited: RunningServer, figures: Figures, soak: bool):
    count = 240 if soak else 60
    registered = new_identity()
    limited.admin("register-client", registered.client_id)
    time.sleep(1.1)  # a fresh window
    fresh, control = [], []
    start = time.monotonic()
    for _ in range(count):  # interleaved: the same address, at the same moments
        fresh.append(signed(limited, new_identity(), "POST", FIND, FIND_BODY))
        control.append(signed(limited, registered, "POST", FIND, FIND_BODY))
    elapsed = time.monotonic() - start
    statuses = [a[0] for a in fresh]
    assert set(statuses) <= {200, 429}, statuses
    assert_rate_limited([a for a in fresh if a[0] == 429])
    assert statuses.count(200) <= served_bound(elapsed), (statuses, elapsed)
    assert statuses.count(429) > count // 2, f"most fresh keys must be refused: {statuses}"
    # A registered client spends its own (generous) budget, not the address's that the fresh keys exhausted.
    assert [a[0] for a in control] == [200] * count, [a[1:] for a in control if a[0] != 200][:3]
    record(
        figures,
        "3 rate limits: fresh keys against the address limit",
        count,
        count,
        elapsed,
        {
            "fresh_key_requests": count,
            "refused_429": statuses.count(429),
            "served": statuses.count(200),
            "registered_control_served": count,
            "limit": f"{PER_ADDRESS}/second",
        },
    )


def find_with_forwarded(server: RunningServer, forwarded: list[str | None]) -> list[int]:
    statuses = []
    for value in forwarded:
        headers = {**JSON, **({"X-Forwarded-For": value, "X-Real-IP": value} if value else {})}
        statuses.append(call(server, "POST", FIND, FIND_BODY, headers)[0])
    return statuses


def test_forwarded_for_is_trusted_only_from_a_trusted_proxy(
    limited: RunningServer, proxied: RunningServer, figures: Figures
) -> None:
    burst = 30
    rotating = [f"10.1.3.{i}" for i in range(burst)]
    time.sleep(1.1)
    start = time.monotonic()
    untrusted = find_with_forwarded(limited, rotating)  # no trusted proxies: counted by 127.0.0.1
    elapsed = time.monotonic() - start
    assert 429 in untrusted and untrusted.count(200) <= served_bound(elapsed), untrusted
    # Behind a trusted proxy on 127.0.0.1 each X-Forwarded-For is its own client...
    trusted_rotating = find_with_forwarded(proxied, rotating)
    assert trusted_rotating == [200] * burst, trusted_rotating
    # ...so the same burst from one of them is limited, against that address and not the proxy's.
    one = find_with_forwarded(proxied, ["10.1.2.3"] * burst)
    assert 429 in one, one
    assert find_with_forwarded(proxied, ["10.1.2.3", "10.1.2.4", None]) == [429, 200, 200]
    record(
        figures,
        "3 rate limits: forwarded addresses",
        3 * burst,
        burst,
        {
            "untrusted_rotating_refused": untrusted.count(429),
            "trusted_rotating_refused": 0,
            "trusted_one_address_refused": one.count(429),
            "burst": burst,
        },
    )


def test_pending_registrations_are_capped_per_address(google: RunningServer, figures: Figures, soak: bool):
    count = 200 if soak else 60

    def register(identity: ClientIdentity, source: str = "127.0.0.1") -> tuple[int, dict[str, str], Any]:
        return signed(google, identity, "POST", REGISTER, REGISTER_BODY, source=source)

    repeat = new_identity()
    status, _, first = register(repeat)
    assert status == 200 and first["status"] == "pending", first
    with cf.ThreadPoolExecutor(8) as pool:  # concurrently, as an attacker would
        answers = list(pool.map(lambda _: register(new_identity()), range(count)))
    pending = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert len(pending) == MAX_PENDING - 1, [a[0] for a in answers]
    assert all(a[2]["status"] == "pending" for a in pending)
    assert len({a[2]["registration_id"] for a in pending} | {first["registration_id"]}) == MAX_PENDING
    assert_rate_limited(refused)
    # The same client asking again, even at the cap, gets its pending registration back, not a new one.
    for _ in range(3):
        status, _, again = register(repeat)
        assert status == 200 and again["registration_id"] == first["registration_id"], again
    # The cap is per address: another machine may still register.
    status, _, other = register(new_identity(), source="127.0.0.2")
    assert status == 200 and other["status"] == "pending", other
    with sqlite3.connect(f"file:{google.data_dir / 'server.db'}?mode=ro", uri=True) as db:
        rows = dict(db.execute("SELECT address, COUNT(*) FROM registrations GROUP BY address").fetchall())
    assert rows == {"127.0.0.1": MAX_PENDING, "127.0.0.2": 1}, rows
    record(
        figures,
        "3 rate limits: pending registrations per address",
        count + 5,
        count,
        {
            "registrations_sent": count + 1,
            "pending_created": rows["127.0.0.1"],
            "refused_429": len(refused),
            "cap": MAX_PENDING,
        },
    )


# ------------------------------------------------------------------------------------------------ request heads


def flood(sock: socket.socket, prefix: bytes, pieces: Iterator[bytes]) -> tuple[int, Answer]:
    """Send ``prefix`` then ``pieces`` until the server answers or closes; the bytes it took, and its answer."""
    sent = 0
    try:
        sock.sendall(prefix)
        for piece in pieces:
            if answered_or_closed(sock):
                break
            sock.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    return sent, read_answer(sock, 10, until_closed=True)


def test_huge_and_numerous_headers_are_refused_early(heads: RunningServer, figures: Figures, soak: bool) -> None:
    big, chunk = (1024 if soak else 128) * MIB, b"a" * (64 << 10)
    rss_before = rss_kib(heads)
    with HealthProbe(heads) as probe:
        sock = connect(heads)
        try:
            big_sent, big_answer = flood(sock, PARTIAL_HEAD + b"X-Big: ", (chunk for _ in range(big // len(chunk))))
        finally:
            sock.close()
        rss_after = rss_kib(heads)
        many = 100_000
        sock = connect(heads)
        try:
            batches = (b"".join(b"X-a%d: 1\r\n" % (i + j) for j in range(50)) for i in range(0, many, 50))
            many_sent, many_answer = flood(sock, PARTIAL_HEAD, batches)
        finally:
            sock.close()
    for answer in (big_answer, many_answer):
        assert answer.status == 431 and answer.body["error_code"] == "request_too_large", answer
        assert answer.closed, "the connection must be closed after a 431"
    assert big_sent < 16 * MIB, f"{big_sent} bytes of one header were taken before the 431"
    assert rss_after - rss_before < 8 * 1024, f"the server grew by {rss_after - rss_before} KiB"
    # What was sent includes what the kernel's socket buffers held (a few hundred KiB on loopback), so only the
    # answer and the server's memory say where the server stopped; test_heads_at_the_limits pins the count.
    assert many_sent < 4 * MIB, f"{many_sent} bytes of headers were taken before the 431"
    statuses = [s for s, _ in probe.seen]
    assert statuses and set(statuses) == {200}, statuses
    record(
        figures,
        "4 request heads: huge and numerous headers",
        2,
        2,
        {
            "big_header_bytes_offered": big,
            "big_header_bytes_taken_before_431": big_sent,
            "server_rss_growth_kib": rss_after - rss_before,
            "small_headers_offered": many,
            "small_header_bytes_taken_before_431": many_sent,
            "health_checks_meanwhile": len(statuses),
        },
    )


def head_of(size: int | None = None, headers: int = 0) -> bytes:
    """A GET /api/health head of exactly ``size`` bytes (padded by one header), or with ``headers`` X- fields."""
    if size is None:
        return PARTIAL_HEAD + b"".join(b"X-a%d: 1\r\n" % i for i in range(headers)) + b"\r\n"
    pad = size - len(PARTIAL_HEAD) - len(b"X-Pad: \r\n\r\n")
    return PARTIAL_HEAD + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        pytest.param(head_of(MAX_HEAD_BYTES), 200, id="head-of-max-bytes"),
        pytest.param(head_of(MAX_HEAD_BYTES + 1), 431, id="head-one-byte-over"),
        pytest.param(head_of(headers=MAX_HEADERS - 1), 200, id="max-header-fields"),  # with Host: 100
        pytest.param(head_of(headers=MAX_HEADERS), 431, id="one-field-over"),
    ],
)
def test_heads_at_the_limits(heads: RunningServer, head: bytes, status: int) -> None:
    sock = connect(heads)
    try:
        sock.sendall(head)
        answer = read_answer(sock, 10)
    finally:
        sock.close()
    assert answer.status == status, (len(head), answer)
    if status == 431:
        assert answer.body["error_code"] == "request_too_large", answer


def slowloris(server: RunningServer, case: str) -> tuple[Answer, float, int]:
    """One connection that never completes a head: its answer, when it was closed, the head bytes sent."""
    sock = connect(server, timeout=HEAD_TIMEOUT + 10)
    sent, start = 0, time.monotonic()
    try:
        if case == "keep-alive":  # a first request served, then a second head that never ends
            sock.sendall(PARTIAL_HEAD + b"\r\n")
            assert read_answer(sock, 10).status == 200
            start = time.monotonic()
        if case in ("partial", "keep-alive"):
            sock.sendall(PARTIAL_HEAD)
            sent = len(PARTIAL_HEAD)
        if case == "trickle":
            for byte in (PARTIAL_HEAD + b"X-Slow: " + b"s" * 30)[: int(HEAD_TIMEOUT) + 10]:
                if readable(sock, 1.0):
                    break
                sock.sendall(bytes([byte]))
                sent += 1
        answer = read_answer(sock, HEAD_TIMEOUT + 10, until_closed=True)
        return answer, time.monotonic() - start, sent
    finally:
        sock.close()


def test_incomplete_heads_time_out(heads: RunningServer, figures: Figures) -> None:
    cases = ["partial", "silent", "trickle", "keep-alive"]
    with cf.ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(lambda case: slowloris(heads, case), cases), strict=True))
    for case, (answer, closed_after, _) in results.items():
        assert answer.closed, f"{case}: still open after {closed_after:.1f} s"
        assert HEAD_TIMEOUT - 0.5 <= closed_after <= HEAD_TIMEOUT + 3, f"{case}: closed after {closed_after:.1f} s"
        assert case == "silent" or answer.status == 408, (case, answer)
        if answer.status is not None:
            assert answer.status == 408 and answer.body["error_code"] == "request_timeout", (case, answer)
    record(
        figures,
        "4 request heads: deadline",
        len(cases),
        len(cases),
        {f"{case}_closed_after_s": round(r[1], 2) for case, r in results.items()}
        | {"trickle_bytes_sent": results["trickle"][2], "head_timeout_s": HEAD_TIMEOUT},
    )


# ------------------------------------------------------------------------------------------------ connections


def open_slow(server: RunningServer, source: str, count: int, into: list[socket.socket]) -> None:
    for _ in range(count):
        sock = connect(server, source)
        into.append(sock)
        sock.sendall(PARTIAL_HEAD + b"X-Slow: ")


def test_health_answers_while_a_thousand_slow_connections_are_open(
    crowded: RunningServer, figures: Figures, soak: bool
) -> None:
    sources = [f"127.0.0.{2 + i}" for i in range(25 if soak else 5)]  # CONNECTIONS each: 1000 (5000 in soak)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = len(sources) * CONNECTIONS + 500
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(needed, hard) if hard != resource.RLIM_INFINITY else needed, hard)
        )
    slow: list[socket.socket] = []
    latencies: list[float] = []
    over: list[tuple[Answer, float]] = []
    try:
        start = time.monotonic()
        for source in sources:
            open_slow(crowded, source, CONNECTIONS, slow)
        for _ in range(20):  # over the cap of 127.0.0.2: refused at once, not left to the head deadline
            extra, began = connect(crowded, sources[0]), time.monotonic()
            try:
                over.append((read_answer(extra, SLOW_HEAD_TIMEOUT / 2, until_closed=True), time.monotonic() - began))
            finally:
                extra.close()
        for _ in range(8):  # trickle on every slow connection, and ask for /api/health from 127.0.0.1
            for sock in slow:
                sock.send(b"s")
            status, latency = timed_health(crowded)
            assert status == 200
            latencies.append(latency)
            time.sleep(0.2)
        answered = sum(answered_or_closed(sock) for sock in slow)
        held_for = time.monotonic() - start
        assert held_for < SLOW_HEAD_TIMEOUT, "too slow to show anything: the head deadline ended the connections"
    finally:
        for sock in slow:
            sock.close()
    assert answered == 0, f"{answered} of {len(slow)} slow connections under the cap were answered or closed"
    for answer, took in over:
        assert answer.closed and answer.status in (503, None), answer
        assert answer.status is None or answer.body["error_code"] == "too_many_connections", answer
        assert took < SLOW_HEAD_TIMEOUT / 2, f"refused only after {took:.1f} s"
    assert max(latencies) < 1.0, f"/api/health took up to {max(latencies):.2f} s: {latencies}"
    # Once closed, the slots are given back: 127.0.0.2 may hold CONNECTIONS again (and not one more).
    regained = regain(crowded, sources[0])
    assert regained == (CONNECTIONS, 503), regained
    record(
        figures,
        "4 request heads: slow connections",
        len(slow) + len(over),
        len(slow) + len(over),
        {
            "slow_connections_open": len(slow) - answered,
            "sources": len(sources),
            "refused_over_cap": sum(a.closed for a, _ in over),
            "health_max_s": round(max(latencies), 3),
            "health_median_s": round(statistics.median(latencies), 3),
            "per_address_cap": CONNECTIONS,
        },
    )


def regain(server: RunningServer, source: str) -> tuple[int, int | None]:
    """How many slow connections ``source`` may open (the closes of earlier ones may take the server a moment),
    and the answer to one more."""
    accepted = 0
    for _ in range(3):
        time.sleep(1.0)
        held: list[socket.socket] = []
        try:
            open_slow(server, source, CONNECTIONS, held)
            time.sleep(0.2)
            accepted = sum(not answered_or_closed(sock) for sock in held)
            if accepted == CONNECTIONS:
                extra = connect(server, source)
                try:
                    return accepted, read_answer(extra, 10).status
                finally:
                    extra.close()
        finally:
            for sock in held:
                sock.close()
    return accepted, None


# ------------------------------------------------------------------------------------------------ long-polls


def test_long_polls_are_capped_per_client(limited: RunningServer, figures: Figures) -> None:
    alice, bob = new_identity(), new_identity()
    for identity in (alice, bob):
        limited.admin("register-client", identity.client_id)
    status, _, feed = signed(limited, alice, "POST", "/api/feeds", b"{}")
    assert status == 200, feed
    feed_id = feed["feed_id"]

    def poll(identity: ClientIdentity, start: int, wait_ms: int) -> Callable[[], tuple[int, dict[str, str], Any]]:
        target = f"/api/feeds/{feed_id}/messages?start={start}&wait_ms={wait_ms}"
        return lambda: signed(limited, identity, "GET", target, timeout=60)

    with cf.ThreadPoolExecutor(LONG_POLLS + 2) as pool:
        first = [pool.submit(poll(alice, 0, 10_000)) for _ in range(LONG_POLLS + 1)]
        done, waiting = cf.wait(first, timeout=8, return_when=cf.FIRST_COMPLETED)
        assert len(done) == 1, "no long-poll was refused while LONG_POLLS + 1 waited"
        assert_rate_limited([f.result() for f in done])
        other = pool.submit(poll(bob, 0, 300)).result()  # another client: served (an empty page, after 300 ms)
        again = poll(alice, 0, 10_000)()  # alice, while her 4 still wait: refused
        assert not any(f.done() for f in waiting), "a long-poll ended without a message"
        message = message_body({"wake": "up"})
        body = {"append_id": secrets.token_hex(16), "messages": [{"body": message,
                "signature": alice.sign(signed_bytes(feed_id, message))}]}  # fmt: skip
        appended = signed(limited, alice, "POST", f"/api/feeds/{feed_id}/messages", json.dumps(body).encode())
        woken = [f.result(timeout=30) for f in waiting]
        later = list(pool.map(lambda f: f(), [poll(alice, 1, 300) for _ in range(LONG_POLLS)]))
    assert other[0] == 200 and other[2]["messages"] == [], other
    assert_rate_limited([again])
    assert appended[0] == 200, appended
    assert [(s, len(b["messages"])) for s, _, b in woken] == [(200, 1)] * LONG_POLLS, woken
    assert [a[0] for a in later] == [200] * LONG_POLLS, later
    record(
        figures,
        "4 long-polls per client",
        2 * LONG_POLLS + 3,
        2,
        {"cap": LONG_POLLS, "refused_over_cap": 2, "other_client_served": True, "served_after": LONG_POLLS},
    )


def test_websocket_upgrades_do_not_use_up_an_address(crowded: RunningServer, figures: Figures) -> None:
    """Each WebSocket handshake handed its connection to a protocol the connection limit never saw close: after
    as many as the cap, every connection from that address was refused with 503 until a restart. The server
    has no WebSocket routes, so an upgrade is an ordinary request now, and the address keeps working."""
    source, attempts = "127.0.0.40", CONNECTIONS + 20
    upgrade = (
        b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    statuses: dict[str, int] = {}
    for _ in range(attempts):
        sock = connect(crowded, source)
        try:
            sock.sendall(upgrade)
            answer = read_answer(sock, 10)
        finally:
            sock.close()
        statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1
    assert "101" not in statuses, statuses
    deadline = time.monotonic() + 10  # the server sees the last closes a moment after they happen
    while (status := timed_health(crowded, source)[0]) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 200, f"after {attempts} upgrade requests, {source} is refused: {status}"
    record(figures, "4 connections: WebSocket upgrades", attempts, attempts, {"answers": statuses, "cap": CONNECTIONS})
