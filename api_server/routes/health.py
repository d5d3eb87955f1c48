"""Liveness and what the server offers; unauthenticated. Served on the event loop (``async``), touching neither
the database nor the thread pool, so it answers while every worker thread waits on a locked database."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from kachery_cloud.protocol.request_signing import SCHEME_VERSION

from .. import __version__
from .deps import ContextDep

router = APIRouter(prefix="/api", tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    registration_mode: Literal["local", "google", "none"]
    signature_window_sec: int
    server_id: str = Field(description="signed into every request for this server (X-Kachery-Server)")
    signature_scheme: str = Field(description="the request-signing scheme this server verifies")


@router.get("/health", response_model=Health)
async def health(context: ContextDep) -> Health:
    return Health(
        status="ok",
        version=__version__,
        registration_mode=context.settings.registration_mode,
        signature_window_sec=context.settings.signature_window_sec,
        server_id=context.server_id,
        signature_scheme=SCHEME_VERSION,
    )


class Ready(BaseModel):
    status: Literal["ready"]


@router.get("/health/ready", response_model=Ready, responses={503: {"description": "the database cannot be reached"}})
def ready(context: ContextDep) -> Ready:
    """For load balancers: 200 once this replica can reach its database, 503 (database_unavailable) while it
    cannot. Needs no Host header. Runs in the thread pool, like the requests it stands for."""
    context.db.ping()
    return Ready(status="ready")
