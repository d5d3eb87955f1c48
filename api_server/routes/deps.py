"""Named FastAPI dependencies: the server context and the verified caller."""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import Depends, Request

from ..auth import Caller, require_registered
from ..context import ServerContext


async def get_context(request: Request) -> ServerContext:
    # async: FastAPI runs a plain def dependency in the thread pool, which a locked database can fill up.
    return request.app.state.context


async def _raw_body(request: Request) -> bytes:
    # Starlette keeps the body, so FastAPI still parses it for the endpoint afterwards.
    return await request.body()


def _request_target(request: Request) -> str:
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    query = request.scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def optional_caller(
    request: Request,
    body: Annotated[bytes, Depends(_raw_body)],
    context: Annotated[ServerContext, Depends(get_context)],
) -> Caller:
    """Anonymous if the request carries no signature; otherwise verified (registered or not)."""
    address = request.client.host if request.client else "unknown"
    return context.authenticator.authenticate(request.method, _request_target(request), body, request.headers, address)


def registered_caller(
    caller: Annotated[Caller, Depends(optional_caller)],
    context: Annotated[ServerContext, Depends(get_context)],
) -> Caller:
    return require_registered(caller, context.server_url)


ContextDep = Annotated[ServerContext, Depends(get_context)]
OptionalCaller = Annotated[Caller, Depends(optional_caller)]
RegisteredCaller = Annotated[Caller, Depends(registered_caller)]


def long_poll(context: ServerContext, caller: Caller, wait_ms: int) -> contextlib.AbstractContextManager[None]:
    """One of the caller's long-poll slots while a request that waits (``wait_ms`` > 0) is served; 429 if the
    caller has none free. A request that does not wait needs none."""
    return context.long_polls.slot(caller.limit_key) if wait_ms > 0 else contextlib.nullcontext()
