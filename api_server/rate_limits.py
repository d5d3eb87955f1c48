"""Server layer 4: how often one caller may ask. A client whose requests come faster than the server's
limits gets 429 ``rate_limited`` with ``Retry-After``, which kachery-cloud clients wait out and retry.

Signed requests count against their (verified) client id, so nobody can spend another client's budget by
naming it; requests without a valid signature count against their network address. The counts are moving
windows of the ``limits`` library, kept in ``rate_limit_storage``: each API process's memory by default (behind
N replicas a client may then reach N times the limit, which still stops one runaway script from starving everyone
else), or a Redis that all replicas share. If that Redis fails or does not answer within half a second,
requests are let through uncounted for the next 5 s (and the failure logged, once a minute) rather than refused
or held up: a rate limit is not worth an outage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator

from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from .errors import RateLimited

_log = logging.getLogger("kachery_cloud_server")
_STORAGE_TIMEOUT_SEC = 0.5
_STORAGE_RETRY_SEC = (
    5.0  # after a failure of the shared storage, requests go uncounted this long before it is tried again
)


class RateLimiter:
    def __init__(self, per_client: str | None, per_address: str | None, storage: str = "memory://") -> None:
        # Already checked by the settings ("" and None: no limit).
        self._per_client = parse_many(per_client) if per_client else []
        self._per_address = parse_many(per_address) if per_address else []
        options: dict[str, object] = {}
        if not storage.startswith("memory://"):
            # A Redis that hangs must not hang every request: half a second, then the request goes uncounted.
            options = {
                "key_prefix": "kachery-cloud",
                "wrap_exceptions": True,
                "socket_timeout": _STORAGE_TIMEOUT_SEC,
                "socket_connect_timeout": _STORAGE_TIMEOUT_SEC,
            }
        self._windows = MovingWindowRateLimiter(storage_from_string(storage, **options))
        self._last_warning = 0.0
        self._storage_down_until = 0.0

    def client_request(self, client_id: str) -> None:
        """Count one request of a verified client; :class:`RateLimited` if it is over its limit."""
        self._count(self._per_client, "client", client_id)

    def address_request(self, address: str) -> None:
        """Count one request that carries no valid signature, by the address it came from."""
        self._count(self._per_address, "address", address)

    def _count(self, items: list[RateLimitItem], kind: str, key: str) -> None:
        if items and time.monotonic() < self._storage_down_until:
            return  # it failed a moment ago: not every request should wait for it to fail again
        for item in items:
            try:
                allowed = self._windows.hit(item, kind, key)
                reset_at = time.time() + 1 if allowed else self._windows.get_window_stats(item, kind, key).reset_time
            except StorageError as e:
                self._storage_failed(e)
                return
            if not allowed:
                retry_after = max(1, math.ceil(reset_at - time.time()))
                raise RateLimited(
                    f"too many requests from this {kind} (limit {item}); try again in {retry_after} s",
                    retry_after_sec=retry_after,
                )

    def _storage_failed(self, error: Exception) -> None:
        now = time.monotonic()
        self._storage_down_until = now + _STORAGE_RETRY_SEC
        if now - self._last_warning >= 60:  # once a minute, not once a request
            self._last_warning = now
            _log.warning("the rate-limit storage failed (%s); requests go uncounted until it answers again", error)


class LongPollSlots:
    """How many long-polls (waits for feed messages, task changes, task claims) each caller has waiting at once
    in this process: each holds a connection and a wait, so one client must not pile up thousands of them."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._waiting: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self, caller_key: str) -> Iterator[None]:
        """Hold one of ``caller_key``'s slots while the block runs; :class:`RateLimited` if it has none free."""
        with self._lock:
            if self._waiting[caller_key] >= self.per_client:
                raise RateLimited(
                    f"this client already has {self.per_client} long-polls waiting (the limit); try again in 1 s",
                    retry_after_sec=1,
                )
            self._waiting[caller_key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting[caller_key] -= 1
                if self._waiting[caller_key] <= 0:
                    del self._waiting[caller_key]
