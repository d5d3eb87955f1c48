"""Request heads a hostile network client sends: capped in size and count (431), and timed out when they never
end (408), while /api/health keeps answering. A real server process, raw sockets on 127.0.0.0/8 only."""

from __future__ import annotations

import concurrent.futures as cf
import socket
import time
from collections.abc import Iterator

import pytest

from ..servers import RunningServer
from .conftest import Figures
from .limits_kit import (
    HEAD_TIMEOUT,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MIB,
    PARTIAL_HEAD,
    Answer,
    HealthProbe,
    answered_or_closed,
    connect,
    read_answer,
    readable,
    record,
    rss_kib,
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
