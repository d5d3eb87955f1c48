"""Mutables: thin HTTP over :mod:`api_server.services.mutables`. Keys travel in JSON bodies, not in paths, so
any key of the grammar arrives exactly as written."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..services.mutables import MAX_LIST
from .deps import ContextDep, OptionalCaller, RegisteredCaller

router = APIRouter(prefix="/api/mutables", tags=["mutables"])

_PROJECT = Field(None, description="default: the caller's default project (required for anonymous callers)")
_EXPECTED = Field(
    None, ge=0, description="compare-and-swap: act only if the mutable is at this version (0: it must not be set)"
)


class KeyRequest(BaseModel):
    project_id: str | None = _PROJECT
    key: str


class SetRequest(BaseModel):
    project_id: str | None = _PROJECT
    key: str
    value: str
    expected_version: int | None = _EXPECTED


class DeleteRequest(BaseModel):
    project_id: str | None = _PROJECT
    key: str
    expected_version: int | None = _EXPECTED


class DeleteFolderRequest(BaseModel):
    project_id: str | None = _PROJECT
    folder_key: str


class ListRequest(BaseModel):
    project_id: str | None = _PROJECT
    folder_key: str | None = Field(None, description="list the keys under this folder (default: every key)")
    after: str | None = Field(None, description="start after this key (the next_after of the previous page)")
    limit: int = Field(MAX_LIST, ge=1, le=MAX_LIST)


class MutableResponse(BaseModel):
    project_id: str
    key: str
    found: bool
    version: int = Field(description="current version; 0 for a key that is not set (as expected_version counts it)")
    value: str | None = None
    updated_at_ms: int | None = None
    updated_by_client_id: str | None = None
    size: int | None = None


class SetResponse(BaseModel):
    project_id: str
    key: str
    version: int


class DeleteResponse(BaseModel):
    project_id: str
    key: str
    deleted: bool
    version: int


class DeleteFolderResponse(BaseModel):
    project_id: str
    folder_key: str
    deleted: int = Field(description="how many keys were deleted")


class ListedMutable(BaseModel):
    key: str
    version: int
    updated_at_ms: int
    updated_by_client_id: str
    size: int


class ListResponse(BaseModel):
    project_id: str
    mutables: list[ListedMutable]
    next_after: str | None


@router.post("/get", response_model=MutableResponse, response_model_exclude_none=True)
def get_mutable(body: KeyRequest, caller: OptionalCaller, context: ContextDep) -> dict:
    """The value and version of a mutable (anyone may read those of a public project)."""
    return context.mutables.get(caller, body.project_id, body.key)


@router.post("/set", response_model=SetResponse)
def set_mutable(body: SetRequest, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Set a mutable; with ``expected_version``, only if nobody changed it since (409 version_conflict)."""
    return context.mutables.set(caller, body.project_id, body.key, body.value, body.expected_version)


@router.post("/delete", response_model=DeleteResponse)
def delete_mutable(body: DeleteRequest, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Delete a mutable; with ``expected_version``, only if nobody changed it since (409 version_conflict)."""
    return context.mutables.delete(caller, body.project_id, body.key, body.expected_version)


@router.post("/delete-folder", response_model=DeleteFolderResponse)
def delete_folder(body: DeleteFolderRequest, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Delete every mutable under a folder key, in one transaction."""
    return context.mutables.delete_folder(caller, body.project_id, body.folder_key)


@router.post("/list", response_model=ListResponse)
def list_mutables(body: ListRequest, caller: OptionalCaller, context: ContextDep) -> dict:
    """The keys under a folder (with versions and sizes, not values), in key order, a page at a time."""
    return context.mutables.list_keys(caller, body.project_id, body.folder_key, body.after, body.limit)
