"""Server layer 4: who is calling. Verifies signed requests (see kachery_cloud.protocol.request_signing) with a
timestamp window and nonces kept in the database, so that replicas sharing one database agree on replays.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from sqlalchemy import bindparam, delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kachery_cloud.protocol.request_signing import (
    CLIENT_ID_RE,
    HEADER_CLIENT_ID,
    HEADER_NONCE,
    HEADER_SERVER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    NONCE_RE,
    SERVER_ID_RE,
    SIGNATURE_HEADERS,
    SIGNATURE_RE,
    TIMESTAMP_RE,
    body_digest,
    signing_message,
    verify_signature,
)

from .db.models import Client, RequestNonce, ServerIdentity, User, now_ms
from .db.session import Database
from .errors import AuthenticationFailed, ClientNotRegistered
from .rate_limits import RateLimiter

_V1_HEADERS = (HEADER_CLIENT_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
UPGRADE_MESSAGE = (
    "this kachery-cloud client signs requests in an older way (no X-Kachery-Server header) that this server "
    "no longer accepts, since such a request could be replayed to another server: upgrade the client "
    "(pip install --upgrade kachery-cloud)"
)
# A client's last_seen_ms is updated when it is older than this.
LAST_SEEN_RESOLUTION_MS = 60_000
# Expired nonces are deleted at most this often per process.
_PURGE_INTERVAL_SEC = 60.0
# The primary key (client_id, nonce) makes a replay fail here, on every replica.
_REMEMBER_NONCE = text(
    "INSERT INTO request_nonces (client_id, nonce, expires_at_ms) VALUES (:client_id, :nonce, :expires)"
)
_CLIENT_AND_USER = (
    select(Client.last_seen_ms, User).join(User, User.id == Client.user_id).where(Client.id == bindparam("client_id"))
)
_SEEN = update(Client).where(Client.id == bindparam("client_id")).values(last_seen_ms=bindparam("now"))


@dataclass(frozen=True)
class Caller:
    """The verified sender of a request. ``client_id`` None = anonymous; ``user`` None = not registered."""

    client_id: str | None
    user: User | None = None
    address: str = ""  # the network address the request came from

    @property
    def user_id(self) -> int | None:
        return self.user.id if self.user is not None else None

    @property
    def limit_key(self) -> str:
        """Whose budget a request spends: a registered client's own, anyone else's address's (keys are free)."""
        return f"client:{self.client_id}" if self.user is not None else f"address:{self.address}"


def server_id(session: Session) -> str:
    """The id of this server (shared by its replicas, made by migration 0007), which requests are signed for."""
    found = session.scalars(select(ServerIdentity.id)).first()
    if found is None:
        raise RuntimeError("the database has no server id; run the migrations (kachery-cloud-server start does)")
    return found


class RequestAuthenticator:
    def __init__(self, db: Database, window_sec: int, limiter: RateLimiter, server_id: str) -> None:
        self.db = db
        self.limiter = limiter
        self.window_ms = window_sec * 1000
        self.server_id = server_id
        self._last_purge = 0.0

    def authenticate(self, method: str, target: str, body: bytes, headers: Mapping[str, str], address: str) -> Caller:
        """The verified caller (anonymous if the request carries none of the signature headers).

        Raises :class:`AuthenticationFailed` for anything else: missing, empty or malformed headers, a bad
        signature, a request signed for another server, a timestamp outside the window, a nonce already used.
        Requests of registered clients count against their client's rate limit, all others (anonymous,
        refused, or signed by a key no user owns, which anyone can make) against their network ``address``'s
        (:class:`RateLimited` when over it).
        """
        try:
            caller = self._verify(method, target, body, headers)
        except AuthenticationFailed:
            self.limiter.address_request(address)
            raise
        if caller.user is None:
            self.limiter.address_request(address)
        return replace(caller, address=address)

    def _verify(self, method: str, target: str, body: bytes, headers: Mapping[str, str]) -> Caller:
        # Present at all, even empty: a request that carries a signature header is a signed request.
        present = [h for h in SIGNATURE_HEADERS if headers.get(h) is not None]
        if not present:
            return Caller(client_id=None)
        if HEADER_SERVER_ID not in present and all(headers.get(h) for h in _V1_HEADERS):
            raise AuthenticationFailed(UPGRADE_MESSAGE, error_code="upgrade_required")
        empty = [h for h in SIGNATURE_HEADERS if not headers.get(h)]
        if empty:
            raise AuthenticationFailed(
                f"incomplete request signature: missing or empty {', '.join(empty)}", error_code="missing_signature"
            )
        client_id = headers[HEADER_CLIENT_ID]
        timestamp = headers[HEADER_TIMESTAMP]
        nonce = headers[HEADER_NONCE]
        signed_for = headers[HEADER_SERVER_ID]
        signature = headers[HEADER_SIGNATURE]
        if not (
            CLIENT_ID_RE.match(client_id)
            and TIMESTAMP_RE.match(timestamp)
            and NONCE_RE.match(nonce)
            and SERVER_ID_RE.match(signed_for)
            and SIGNATURE_RE.match(signature)
        ):
            raise AuthenticationFailed("malformed request signature headers", error_code="malformed_signature")
        if signed_for != self.server_id:
            raise AuthenticationFailed(
                f"this request was signed for another kachery-cloud server (id {signed_for}); this server's id is "
                f"{self.server_id} (GET /api/health)",
                error_code="wrong_server",
            )
        timestamp_ms = int(timestamp)
        now = now_ms()
        if abs(now - timestamp_ms) > self.window_ms:
            raise AuthenticationFailed(
                f"request timestamp is {abs(now - timestamp_ms) / 1000:.0f} s away from the server's clock "
                f"(allowed: {self.window_ms // 1000} s); check this machine's clock",
                error_code="stale_timestamp",
            )
        message = signing_message(
            server_id=self.server_id,
            method=method,
            target=target,
            body_sha256=body_digest(body),
            timestamp_ms=timestamp_ms,
            nonce=nonce,
            client_id=client_id,
        )
        if not verify_signature(client_id, message, signature):
            raise AuthenticationFailed("request signature does not verify", error_code="bad_signature")
        # Counted once the signature shows who is asking, and before the nonce costs a transaction. (A key that
        # no user owns is counted against its address as well, once the transaction has shown that.)
        self.limiter.client_request(client_id)
        # Kept for twice the window, so replicas whose clocks differ a little still agree on replays.
        return self._remember_nonce_and_load(client_id, nonce, timestamp_ms + 2 * self.window_ms)

    def _remember_nonce_and_load(self, client_id: str, nonce: str, expires_at_ms: int) -> Caller:
        # Only reached after the signature verified, so every stored nonce cost its sender a valid signature.
        # One transaction records the nonce and loads the client's user, in two statements (every signed request
        # runs this: plain statements, not the ORM's unit of work).
        self._maybe_purge()
        try:
            with self.db.transaction() as session:
                session.execute(_REMEMBER_NONCE, {"client_id": client_id, "nonce": nonce, "expires": expires_at_ms})
                found = session.execute(_CLIENT_AND_USER, {"client_id": client_id}).first()
                if found is None:
                    return Caller(client_id=client_id)
                last_seen, user = found
                now = now_ms()
                if (last_seen or 0) < now - LAST_SEEN_RESOLUTION_MS:  # at most once a minute, not on every request
                    session.execute(_SEEN, {"client_id": client_id, "now": now})
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
