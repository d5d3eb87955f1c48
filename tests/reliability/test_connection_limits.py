"""Connections a hostile network client holds open: capped per address while /api/health answers, and WebSocket
handshakes that do not use up an address. A real server process, raw sockets on 127.0.0.0/8 only."""

from __future__ import annotations

import resource
import socket
import statistics
import time

from ..servers import RunningServer
from .conftest import Figures
from .limits_kit import (
    CONNECTIONS,
    PARTIAL_HEAD,
    SLOW_HEAD_TIMEOUT,
    Answer,
    answered_or_closed,
    connect,
    read_answer,
    record,
    timed_health,
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
