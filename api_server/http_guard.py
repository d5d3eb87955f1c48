"""Server layer 8: limits on what a network client may make the server hold before a request reaches the app.

uvicorn's httptools protocol, with:

- **a cap on request heads**: at most ``max_head_bytes`` (request line and headers) and ``max_headers`` header
  fields, else 431 and the connection is closed. Without it a single 128 MiB header was buffered whole, and
  100,000 headers were parsed.
- **a deadline for each head**: a connection must deliver a complete request head within ``head_timeout_sec``
  of opening (or of the first byte of its next request), else 408 and it is closed. Idle keep-alive
  connections are closed by uvicorn's own ``timeout_keep_alive``. Without it, connections that never finish a
  head stayed open for ever.
- **a cap on open connections per client address** (``max_connections_per_address``; trusted proxies, whose
  connections carry many clients, are exempt): further connections are answered 503 and closed at once.

The counts live in the process (its one event loop): behind N replicas a client may hold N times as many.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int
    max_headers: int
    head_timeout_sec: float
    max_connections_per_address: int
    exempt_addresses: frozenset[str]


_HEAD_END = b"\r\n\r\n"


def guarded_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn (``Config(http=...)``), enforcing ``limits``."""

    class GuardedHttpTools(_GuardedHttpTools):
        pass

    GuardedHttpTools.limits = limits
    GuardedHttpTools.open_per_address = Counter()
    return GuardedHttpTools


class _GuardedHttpTools(HttpToolsProtocol):
    limits: ConnectionLimits
    open_per_address: Counter[str]  # per protocol class, so per server

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._address = ""
        self._counted = False
        self._in_head = True  # bytes arriving now belong to a request head
        self._head_bytes = 0
        self._tail = b""  # the last bytes of the head so far: its end may straddle two reads
        self._header_count = 0
        self._refusal: tuple[int, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._address = self.client[0] if self.client else ""
        limits = self.limits
        if self._address not in limits.exempt_addresses:
            if self.open_per_address[self._address] >= limits.max_connections_per_address:
                self._answer(503, f"too many connections from this address (at most "
                             f"{limits.max_connections_per_address}); close some and try again")  # fmt: skip
                return
            self.open_per_address[self._address] += 1
            self._counted = True
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self._counted:
            self._counted = False
            self.open_per_address[self._address] -= 1
            if self.open_per_address[self._address] <= 0:
                del self.open_per_address[self._address]
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None or self.transport.is_closing():
            return
        if self._in_head:
            if self._head_timer is None:
                self._start_head_timer()
            seen = self._tail + data
            end = seen.find(_HEAD_END)
            in_head = len(data) if end == -1 else end + len(_HEAD_END) - len(self._tail)
            self._head_bytes += in_head
            self._tail = seen[-(len(_HEAD_END) - 1) :]
            if self._head_bytes > self.limits.max_head_bytes:
                self._answer(431, f"the request head is over {self.limits.max_head_bytes} bytes")
                return
        super().data_received(data)

    # ------------------------------------------------------------------------- parser callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = (431, f"the request has more than {self.limits.max_headers} header fields")
            raise _TooManyHeaders  # stops the parser; uvicorn then calls send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._tail, self._header_count = True, 0, b"", 0

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:
            status, message = self._refusal
            self._refusal = None
            self._answer(status, message)
            return
        super().send_400_response(msg)

    # ------------------------------------------------------------------------- helpers

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.limits.head_timeout_sec, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._answer(408, f"no complete request head within {self.limits.head_timeout_sec:g} s")

    def _answer(self, status: int, message: str) -> None:
        """A JSON error as the API gives them, then close the connection."""
        reasons = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
        code = {408: "request_timeout", 431: "request_too_large", 503: "too_many_connections"}[status]
        body = json.dumps({"error_code": code, "message": message}).encode()
        head = [
            f"HTTP/1.1 {status} {reasons[status]}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
        ]
        if status == 503:
            head.append("retry-after: 1")
        self._refusal = (status, message)  # nothing more is read from this connection
        self.transport.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        self.transport.close()


class _TooManyHeaders(Exception):
    pass
