"""The embedded object store process: nanio, behind :class:`StoreGuard`, which makes it refuse what AWS S3 and
SeaweedFS refuse and nanio alone does not:

- **a header nobody signed that changes what a request does.** Every ``x-amz-*`` header, and on writes every
  header that becomes part of the stored object (``Content-Encoding``, ``Content-Disposition``,
  ``Cache-Control``, ``Content-Language``, ``Expires``), must be covered by the request's SigV4 signature
  (``X-Amz-SignedHeaders`` of a presigned URL, ``SignedHeaders`` of an ``Authorization`` header). Otherwise a
  client holding a presigned URL could turn it into something the server never signed: a copy of another
  project's object (``x-amz-copy-source``), metadata the server trusts, an encoding that changes the bytes
  readers get. ``Content-Type`` is let through unsigned (tools such as s5cmd send one); it changes no byte,
  but a public URL serves it back as sent.
- **copies**, signed or not: the API server never copies objects.
- **a query parameter given twice**: this guard and nanio could each read another copy of it.
- **a PUT body whose SHA-1 differs from its ``x-amz-checksum-sha1``**, hashed as the body streams through; if it
  does not match, nanio's write fails before the object is renamed into place and the client gets BadDigest.
  The verified checksum is kept as the object's metadata ``x-amz-meta-kachery-sha1``, which HEAD returns, so
  the API server can see that the store checked what it recorded (AWS S3 and SeaweedFS return the checksum
  itself).
- **a PUT with ``If-None-Match: *`` onto an object that exists** (412, as S3 conditional writes): signed into
  single-PUT URLs, so that no URL can write a recorded blob's object again.

With these, the API server can trust a single presigned PUT of a blob (the checksum header is signed into the
URL) instead of reading every upload back to hash it again.

    NANIO_ACCESS_KEY=... NANIO_SECRET_KEY=... python -m api_server.checked_store DATA_DIR HOST PORT
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

VERIFIED_SHA1_META = "x-amz-meta-kachery-sha1"
# Standard headers that nanio stores with an object and serves back with it.
_STORED_HEADERS = (b"content-encoding", b"content-disposition", b"cache-control", b"content-language", b"expires")
_SIGNED_HEADERS_FIELD = re.compile(rb"SignedHeaders=([^,\s]*)")


class StoreGuard:
    """ASGI middleware in front of nanio (see the module docstring)."""

    def __init__(self, app: App, data_dir: Path) -> None:
        self.app = app
        self.data_dir = data_dir

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from nanio.errors import AccessDenied, PreconditionFailed

        headers = scope["headers"]
        names = {name.lower() for name, _ in headers}
        if b"x-amz-copy-source" in names or b"x-amz-copy-source-range" in names:
            await _refuse(send, AccessDenied("This store does not copy objects."))
            return
        parameters = [part.split(b"=", 1)[0].lower() for part in scope.get("query_string", b"").split(b"&") if part]
        if len(parameters) != len(set(parameters)):
            # This guard and nanio might each read another copy (X-Amz-SignedHeaders: the first here, the last
            # in nanio), and the signature check would no longer cover what this guard checked.
            await _refuse(send, AccessDenied("A query parameter appears more than once."))
            return
        signed = _signed_header_names(scope)
        writes = scope["method"] in ("PUT", "POST")
        unsigned = sorted(
            name.decode("latin-1")
            for name in names
            if name not in signed and (name.startswith(b"x-amz-") or (writes and name in _STORED_HEADERS))
        )
        if unsigned:
            message = f"There were headers present in the request which were not signed: {', '.join(unsigned)}"
            await _refuse(send, AccessDenied(message))
            return
        if scope["method"] != "PUT" or b"uploadid" in _query_names(scope):
            await self.app(scope, receive, send)
            return
        values = {name.lower(): value for name, value in headers}
        if values.get(b"if-none-match", b"").strip() == b"*":
            # Asked once nanio reads the body, which it does only after the signature verified: answered before,
            # 412 or 403 would tell anyone on the network whether an object exists.
            receive = _refused_if(receive, lambda: self._exists(scope), PreconditionFailed)
        claimed = values.get(b"x-amz-checksum-sha1")
        if claimed is None:
            await self.app(scope, receive, send)
            return
        # nanio keeps x-amz-meta-* headers as the object's metadata; the object only comes into being if the body
        # matches, so the stamp is true whenever it is there.
        scope = dict(scope)
        scope["headers"] = [
            *[(n, v) for n, v in headers if n.lower() != VERIFIED_SHA1_META.encode()],
            (VERIFIED_SHA1_META.encode(), claimed),
        ]
        await self.app(scope, _checked_body(receive, claimed, values), send)

    def _exists(self, scope: Scope) -> bool:
        from nanio.storage.paths import object_path

        bucket, _, key = unquote(scope["path"]).lstrip("/").partition("/")
        try:
            path = object_path(self.data_dir, bucket, key)
        except Exception:  # a key nanio refuses: nanio answers it
            return False
        return path.is_file()


def _refused_if(receive: Receive, refuse: Callable[[], bool], error: Callable[[], Exception]) -> Receive:
    """``receive``, which raises ``error()`` on its first call if ``refuse()`` is true then."""
    asked = False

    async def checked_receive() -> Message:
        nonlocal asked
        if not asked:
            asked = True
            if refuse():
                raise error()
        return await receive()

    return checked_receive


def _checked_body(receive: Receive, claimed: bytes, headers: dict[bytes, bytes]) -> Receive:
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

    return checked_receive


def _signed_header_names(scope: Scope) -> set[bytes]:
    """The header names a request's SigV4 signature covers (empty for an unsigned request)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    listed = query.get("X-Amz-SignedHeaders", [""])[0].encode("latin-1")
    if not listed:
        authorization = dict((n.lower(), v) for n, v in scope["headers"]).get(b"authorization", b"")
        found = _SIGNED_HEADERS_FIELD.search(authorization)
        listed = found.group(1) if found else b""
    return {name.strip().lower() for name in listed.split(b";") if name.strip()}


def _query_names(scope: Scope) -> set[bytes]:
    return {part.split(b"=", 1)[0].lower() for part in scope.get("query_string", b"").split(b"&") if part}


async def _refuse(send: Send, error: Any) -> None:
    body = error.to_xml()
    await send(
        {
            "type": "http.response.start",
            "status": error.http_status,
            "headers": [(b"content-type", b"application/xml"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


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
    uvicorn.run(StoreGuard(build_app(settings), data_dir), host=host, port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
