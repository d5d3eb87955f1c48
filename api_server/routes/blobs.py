"""Blob uploads and downloads: thin HTTP over :mod:`api_server.services.blobs`. The models are the contract."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import Base64Bytes, BaseModel, Field

from ..services import projects, usage
from ..services.blobs import MAX_BATCH, MAX_INLINE_BLOB_BYTES, MAX_PART_URLS, BlobRef
from .deps import ContextDep, OptionalCaller, RegisteredCaller

router = APIRouter(prefix="/api", tags=["blobs"])


class BlobItem(BaseModel):
    sha1: str = Field(description="40 lowercase hex digits")
    size: int = Field(ge=0)


class NeedRequest(BaseModel):
    project_id: str | None = Field(None, description="default: the caller's default project")
    blobs: list[BlobItem] = Field(max_length=MAX_BATCH)


class UploadInstructions(BaseModel):
    sha1: str
    status: Literal["exists", "upload"]
    upload_id: str | None = None
    method: Literal["put", "multipart"] | None = None
    url: str | None = Field(None, description="put: the presigned PUT URL")
    headers: dict[str, str] | None = Field(None, description="put: headers the PUT must carry exactly")
    part_size: int | None = Field(None, description="multipart: bytes per part (the last may be shorter)")
    num_parts: int | None = None
    part_urls: dict[str, str] | None = Field(None, description="multipart: part number -> presigned URL")


class NeedResponse(BaseModel):
    project_id: str
    results: list[UploadInstructions]


class UrlsRequest(BaseModel):
    part_numbers: list[int] = Field(default_factory=list, max_length=MAX_PART_URLS)


class UrlsResponse(BaseModel):
    upload_id: str
    method: Literal["put", "multipart"]
    url: str | None = None
    headers: dict[str, str] | None = None
    part_size: int | None = None
    num_parts: int | None = None
    part_urls: dict[str, str] | None = None


class PartItem(BaseModel):
    part_number: int = Field(ge=1)
    etag: str


class CompleteItem(BaseModel):
    upload_id: str
    parts: list[PartItem] | None = Field(None, description="multipart: every part's ETag as the store returned it")


class CompleteRequest(BaseModel):
    uploads: list[CompleteItem] = Field(max_length=MAX_BATCH)


class CompleteResult(BaseModel):
    upload_id: str
    sha1: str | None
    status: Literal["stored", "mismatch", "not_uploaded", "incomplete", "quota_exceeded", "not_found"]
    message: str


class CompleteResponse(BaseModel):
    results: list[CompleteResult]


class InlineBlob(BaseModel):
    sha1: str = Field(description="40 lowercase hex digits: the SHA-1 the client computed")
    data: Base64Bytes = Field(description=f"the blob's bytes, base64 (at most {MAX_INLINE_BLOB_BYTES} bytes)")


class InlineRequest(BaseModel):
    project_id: str | None = Field(None, description="default: the caller's default project")
    blobs: list[InlineBlob] = Field(max_length=MAX_BATCH)


class InlineResult(BaseModel):
    sha1: str
    status: Literal["stored", "mismatch"]
    message: str


class InlineResponse(BaseModel):
    project_id: str
    results: list[InlineResult]


class FindRequest(BaseModel):
    sha1s: list[str] = Field(max_length=MAX_BATCH)
    project_id: str | None = Field(None, description="preferred project when several hold a blob")


class FindResult(BaseModel):
    sha1: str
    found: bool
    size: int | None = None
    project_id: str | None = None
    url: str | None = Field(None, description="a presigned GET, or the public URL of a public project's blob")
    offset: int | None = Field(
        None,
        description="a small blob kept in a pack: its bytes are offset..offset+size-1 of the object at url",
    )


class FindResponse(BaseModel):
    results: list[FindResult]
    registered: bool = Field(description="whether the caller was recognized as a registered client")


class UsageDay(BaseModel):
    day: str
    requests: int
    bytes_in: int
    bytes_out: int


class UsageResponse(BaseModel):
    project_id: str
    days: list[UsageDay]


@router.post("/blobs/need", response_model=NeedResponse, response_model_exclude_none=True)
def need(body: NeedRequest, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Which of these blobs the project lacks, and for each one how to upload it."""
    blobs = [BlobRef(item.sha1, item.size) for item in body.blobs]
    return context.blobs.need(caller, body.project_id, blobs)


@router.post("/uploads/{upload_id}/urls", response_model=UrlsResponse, response_model_exclude_none=True)
def upload_urls(upload_id: str, body: UrlsRequest, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Fresh URLs for an upload in progress (its PUT URL, or the parts asked for); keeps the upload alive."""
    return context.blobs.upload_urls(caller, upload_id, body.part_numbers)


@router.post("/uploads/complete", response_model=CompleteResponse)
def complete(body: CompleteRequest, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Verify finished uploads and record them as blobs of their projects."""
    items = [
        (item.upload_id, None if item.parts is None else [(p.part_number, p.etag) for p in item.parts])
        for item in body.uploads
    ]
    return {"results": context.blobs.complete(caller, items)}


@router.post("/blobs/inline", response_model=InlineResponse)
def store_inline(body: InlineRequest, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Store small blobs sent in the request itself: one round trip instead of need, PUT and complete."""
    return context.blobs.store_inline(caller, body.project_id, [(item.sha1, item.data) for item in body.blobs])


@router.post("/blobs/find", response_model=FindResponse, response_model_exclude_none=True)
def find(body: FindRequest, caller: OptionalCaller, context: ContextDep) -> dict:
    """Where to download blobs from, among the projects the caller may read (anyone: public projects)."""
    return context.blobs.find(caller, body.sha1s, body.project_id)


@router.get("/projects/{project_id}/usage", response_model=UsageResponse)
def project_usage(project_id: str, caller: RegisteredCaller, context: ContextDep) -> UsageResponse:
    """Requests and bytes per day of a project the caller is a member of."""
    context.usage_meter.flush()  # this process's counts so far (other replicas' come within their interval)
    with context.db.read() as session:
        projects.require_role(session, project_id, caller.user, "read", members_only=True)
        days = usage.usage_of(session, project_id)
    return UsageResponse(project_id=project_id, days=[UsageDay(**d) for d in days])
