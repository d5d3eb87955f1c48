"""Liveness and what the server offers; unauthenticated."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from .. import __version__
from .deps import ContextDep

router = APIRouter(prefix="/api", tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    registration_mode: Literal["local", "google", "none"]
    signature_window_sec: int


@router.get("/health", response_model=Health)
def health(context: ContextDep) -> Health:
    return Health(
        status="ok",
        version=__version__,
        registration_mode=context.settings.registration_mode,
        signature_window_sec=context.settings.signature_window_sec,
    )
