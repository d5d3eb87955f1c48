"""Layer 2: how the server's owner proves, at registration, that they can read the server's owner-token file
(pure, no I/O).

The client never sends the token itself: a server that asked for it (a fake one on this machine while the real
one is down, or any server the client was pointed at) could replay it. It sends an HMAC of the token over the
server's id and its own client id. That proves it read the file, and it is of no use to anyone else: it
registers only this client's key (which the request's signature proves), and only with this server.
"""

from __future__ import annotations

import hashlib
import hmac
import re

_CONTEXT = b"kachery-cloud owner registration v1"
PROOF_RE = re.compile(r"[0-9a-f]{64}")


def owner_proof(token: str, server_id: str, client_id: str) -> str:
    """64 hex digits: HMAC-SHA256 keyed by ``token`` of the context, ``server_id`` and ``client_id``."""
    message = b"\n".join((_CONTEXT, server_id.encode("ascii"), client_id.encode("ascii")))
    return hmac.new(token.encode("ascii"), message, hashlib.sha256).hexdigest()


def is_owner_proof(token: str, server_id: str, client_id: str, given: str) -> bool:
    if not PROOF_RE.fullmatch(given):
        return False
    return hmac.compare_digest(owner_proof(token, server_id, client_id), given)
