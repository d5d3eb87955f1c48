"""Layer 2: the request-signing scheme, shared by the client and the API server (pure, no I/O).

A signed request carries five headers::

    X-Kachery-Client-Id   the client's Ed25519 public key, 64 lowercase hex digits (the client id)
    X-Kachery-Timestamp   milliseconds since the Unix epoch when the request was signed
    X-Kachery-Nonce       32 lowercase hex digits, random, never reused by the client
    X-Kachery-Server      the id of the server the request is for (32 lowercase hex digits; /api/health tells it)
    X-Kachery-Signature   128 hex digits: Ed25519 signature of :func:`signing_message`

The signed message binds the server, the method, the request target (path and query string exactly as sent),
the SHA-256 of the body, the timestamp, the nonce and the client id, each on its own line after a version
tag, so a signature cannot be moved to another request, another body, another client or another server (one
key is used with every server a client talks to). The server refuses timestamps outside its window and nonces
it has already seen within it, which stops replays.

A request carrying any of these headers is a signed request, even if some are empty: it is verified or
refused, never served as anonymous. Clients of scheme v1 (no ``X-Kachery-Server``) are told to upgrade.
"""

from __future__ import annotations

import hashlib
import re

SCHEME_VERSION = "kachery-cloud-request-v2"

HEADER_CLIENT_ID = "X-Kachery-Client-Id"
HEADER_TIMESTAMP = "X-Kachery-Timestamp"
HEADER_NONCE = "X-Kachery-Nonce"
HEADER_SIGNATURE = "X-Kachery-Signature"
HEADER_SERVER_ID = "X-Kachery-Server"
# Every header of the scheme: the presence of any one makes a request a signed one.
SIGNATURE_HEADERS = (HEADER_CLIENT_ID, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SERVER_ID, HEADER_SIGNATURE)

CLIENT_ID_RE = re.compile(r"^[0-9a-f]{64}\Z")
NONCE_RE = re.compile(r"^[0-9a-f]{32}\Z")
SIGNATURE_RE = re.compile(r"^[0-9a-f]{128}\Z")
TIMESTAMP_RE = re.compile(r"^[0-9]{1,16}\Z")
SERVER_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")


def body_digest(body: bytes) -> str:
    """SHA-256 of the request body, hex (the empty body included)."""
    return hashlib.sha256(body).hexdigest()


def signing_message(
    *, server_id: str, method: str, target: str, body_sha256: str, timestamp_ms: int, nonce: str, client_id: str
) -> bytes:
    """The bytes a client signs and the server verifies. ``target`` is the path plus ``?query`` if any."""
    lines = [SCHEME_VERSION, server_id, method.upper(), target, body_sha256, str(timestamp_ms), nonce, client_id]
    return "\n".join(lines).encode("utf-8")


def verify_signature(client_id: str, message: bytes, signature_hex: str) -> bool:
    """Whether ``signature_hex`` is a valid Ed25519 signature of ``message`` by the key ``client_id``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not CLIENT_ID_RE.match(client_id) or not SIGNATURE_RE.match(signature_hex):
        return False
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(client_id))
        key.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True
