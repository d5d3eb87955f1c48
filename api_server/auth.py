"""Server layer 4: who is calling. Verifies signed requests (see kachery_cloud.protocol.request_signing) with a
timestamp window and nonces kept in the database, so that replicas sharing one database agree on replays.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from kachery_cloud.protocol.request_signing import (
    CLIENT_ID_RE,
    HEADER_CLIENT_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    NONCE_RE,
    SIGNATURE_RE,
    TIMESTAMP_RE,
    body_digest,
    signing_message,
    verify_signature,
)

from .db.models import Client, RequestNonce, User, now_ms
from .db.session import Database
from .errors import AuthenticationFailed, ClientNotRegistered
from .rate_limits import RateLimiter

_SIGNATURE_HEADERS = (HEADER_CLIENT_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
# Expired nonces are deleted at most this often per process.
_PURGE_INTERVAL_SEC = 60.0


@dataclass(frozen=True)
class Caller:
    """The verified sender of a request. ``client_id`` None = anonymous; ``user`` None = not registered."""

    client_id: str | None
    user: User | None = None

    @property
    def user_id(self) -> int | None:
        return self.user.id if self.user is not None else None


class RequestAuthenticator:
    def __init__(self, db: Database, window_sec: int, limiter: RateLimiter) -> None:
        self.db = db
        self.limiter = limiter
        self.window_ms = window_sec * 1000
        self._last_purge = 0.0

    def authenticate(self, method: str, target: str, body: bytes, headers: Mapping[str, str], address: str) -> Caller:
        """The verified caller (anonymous if the request carries no signature headers at all).

        Raises :class:`AuthenticationFailed` for anything else: partial headers, a bad signature, a timestamp
        outside the window, a nonce already used. Verified requests count against their client's rate limit,
        the others against their network ``address``'s (:class:`RateLimited` when over it).
        """
        try:
            caller = self._verify(method, target, body, headers)
        except AuthenticationFailed:
            self.limiter.address_request(address)
            raise
        if caller.client_id is None:
            self.limiter.address_request(address)
        return caller

    def _verify(self, method: str, target: str, body: bytes, headers: Mapping[str, str]) -> Caller:
        present = [h for h in _SIGNATURE_HEADERS if headers.get(h)]
        if not present:
            return Caller(client_id=None)
        if len(present) != len(_SIGNATURE_HEADERS):
            missing = ", ".join(h for h in _SIGNATURE_HEADERS if h not in present)
            raise AuthenticationFailed(
                f"incomplete request signature: missing {missing}", error_code="missing_signature"
            )
        client_id = headers[HEADER_CLIENT_ID]
        timestamp = headers[HEADER_TIMESTAMP]
        nonce = headers[HEADER_NONCE]
        signature = headers[HEADER_SIGNATURE]
        if not (
            CLIENT_ID_RE.match(client_id)
            and TIMESTAMP_RE.match(timestamp)
            and NONCE_RE.match(nonce)
            and SIGNATURE_RE.match(signature)
        ):
            raise AuthenticationFailed("malformed request signature headers", error_code="malformed_signature")
        timestamp_ms = int(timestamp)
        now = now_ms()
        if abs(now - timestamp_ms) > self.window_ms:
            raise AuthenticationFailed(
                f"request timestamp is {abs(now - timestamp_ms) / 1000:.0f} s away from the server's clock "
                f"(allowed: {self.window_ms // 1000} s); check this machine's clock",
                error_code="stale_timestamp",
            )
        message = signing_message(
            method=method,
            target=target,
            body_sha256=body_digest(body),
            timestamp_ms=timestamp_ms,
            nonce=nonce,
            client_id=client_id,
        )
        if not verify_signature(client_id, message, signature):
            raise AuthenticationFailed("request signature does not verify", error_code="bad_signature")
        # Counted once the signature shows who is asking, and before the nonce costs a transaction.
        self.limiter.client_request(client_id)
        # Kept for twice the window, so replicas whose clocks differ a little still agree on replays.
        return self._remember_nonce_and_load(client_id, nonce, timestamp_ms + 2 * self.window_ms)

    def _remember_nonce_and_load(self, client_id: str, nonce: str, expires_at_ms: int) -> Caller:
        # Only reached after the signature verified, so every stored nonce cost its sender a valid signature.
        # One transaction records the nonce and loads the client and its user.
        self._maybe_purge()
        try:
            with self.db.transaction() as session:
                session.add(RequestNonce(client_id=client_id, nonce=nonce, expires_at_ms=expires_at_ms))
                session.flush()
                client = session.get(Client, client_id)
                user = session.get(User, client.user_id) if client is not None else None
                return Caller(client_id=client_id, user=user)
        except IntegrityError:
            raise AuthenticationFailed(
                "this request was already received (replayed nonce)", error_code="replayed_nonce"
            ) from None

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < _PURGE_INTERVAL_SEC:
            return
        self._last_purge = now
        with self.db.transaction() as session:
            session.execute(delete(RequestNonce).where(RequestNonce.expires_at_ms < now_ms()))


def require_registered(caller: Caller, server_url: str) -> Caller:
    if caller.client_id is None:
        raise AuthenticationFailed("this request must be signed by a registered client", error_code="missing_signature")
    if caller.user is None:
        raise ClientNotRegistered(
            f"client {caller.client_id} is not registered with {server_url}; run kachery-cloud-init"
        )
    return caller
