"""The embedded object store process: nanio, with the SHA-1 check that AWS S3 and SeaweedFS make and nanio
does not. A PUT that carries ``x-amz-checksum-sha1`` is hashed as its body streams through; if the body does
not match, nanio's write fails before the object is renamed into place and the client gets 400 BadDigest.

With the check, the API server can trust a single presigned PUT of a blob (the checksum header is signed into
the URL) instead of reading every upload back to hash it again.

    NANIO_ACCESS_KEY=... NANIO_SECRET_KEY=... python -m api_server.checked_store DATA_DIR HOST PORT
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Sha1Check:
    """ASGI middleware: refuse a PUT body whose SHA-1 differs from its ``x-amz-checksum-sha1`` header."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "PUT":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        claimed = headers.get(b"x-amz-checksum-sha1")
        if claimed is None or b"x-amz-copy-source" in headers:
            await self.app(scope, receive, send)
            return
        from nanio.errors import BadDigest, InvalidRequest

        try:
            expected = base64.b64decode(claimed, validate=True)
        except binascii.Error:
            expected = b""
        # aws-chunked bodies carry framing and trailers: what streams through is not the object's bytes.
        chunked = b"aws-chunked" in headers.get(b"content-encoding", b"") or headers.get(
            b"x-amz-content-sha256", b""
        ).startswith(b"STREAMING")
        digest = hashlib.sha1()

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                if len(expected) != 20 or chunked:
                    raise InvalidRequest("x-amz-checksum-sha1 must be the base64 SHA-1 of a plain body")
                digest.update(message.get("body", b""))
                if not message.get("more_body", False) and digest.digest() != expected:
                    raise BadDigest("The x-amz-checksum-sha1 you specified did not match the calculated checksum.")
            return message

        await self.app(scope, checked_receive, send)


def main(argv: list[str]) -> None:
    import uvicorn
    from nanio.app import build_app
    from nanio.auth.credentials import EnvCredentialResolver
    from nanio.config import Settings
    from nanio.logging import setup_logging

    data_dir, host, port = Path(argv[0]).resolve(), argv[1], int(argv[2])
    setup_logging("warning")
    settings = Settings(
        data_dir=data_dir,
        host=host,
        port=port,
        credentials=EnvCredentialResolver(),
        log_level="warning",
        access_log=False,
    )
    uvicorn.run(Sha1Check(build_app(settings)), host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
