"""Layer 5: the blob endpoints of the API server, as typed calls. Batches larger than the server takes are
split here, so callers may pass any number of blobs."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import ApiClient

BATCH = 1000  # the server's limit per request
INLINE_MAX_BYTES = 64 << 10  # blobs up to this size are sent inside an API request (the server's limit)
INLINE_BATCH_BYTES = 4 << 20  # bytes of blobs per such request (the server's limit)


@dataclass
class UploadPlan:
    """What the server answered for one blob: ``exists`` already, or how to upload it."""

    sha1: str
    size: int
    exists: bool
    upload_id: str = ""
    method: str = ""  # "put" | "multipart"
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    part_size: int = 0
    num_parts: int = 0
    part_urls: dict[int, str] = field(default_factory=dict)

    def part_range(self, part_number: int) -> tuple[int, int]:
        """Byte offset and length of part ``part_number`` (1-based)."""
        start = (part_number - 1) * self.part_size
        return start, max(0, min(self.part_size, self.size - start))


@dataclass(frozen=True)
class CompleteResult:
    upload_id: str
    sha1: str | None
    status: str  # stored | mismatch | not_uploaded | incomplete | quota_exceeded | not_found
    message: str


@dataclass(frozen=True)
class FoundBlob:
    sha1: str
    size: int
    project_id: str
    url: str
    offset: int | None = None  # set when the blob is bytes offset..offset+size-1 of a pack object at url


def need(api: ApiClient, project_id: str | None, blobs: list[tuple[str, int]]) -> list[UploadPlan]:
    """Ask which of ``blobs`` (sha1, size) the project lacks; returns one plan per blob."""
    plans: list[UploadPlan] = []
    for batch in _batches(blobs):
        sizes = dict(batch)
        body: dict[str, Any] = {"blobs": [{"sha1": s, "size": n} for s, n in batch]}
        if project_id:
            body["project_id"] = project_id
        answer = api.call("POST", "/api/blobs/need", json_body=body, idempotent=True)
        for item in answer["results"]:
            plans.append(_plan(item, sizes[item["sha1"]]))
    return plans


def upload_urls(api: ApiClient, plan: UploadPlan, part_numbers: list[int]) -> None:
    """Refresh ``plan``'s URL (put) or fetch URLs for ``part_numbers`` (multipart), in place."""
    answer = api.call(
        "POST", f"/api/uploads/{plan.upload_id}/urls", json_body={"part_numbers": part_numbers}, idempotent=True
    )
    if answer["method"] == "put":
        plan.url = answer["url"]
        plan.headers = dict(answer.get("headers") or {})
    else:
        plan.part_urls.update({int(n): url for n, url in answer["part_urls"].items()})


def complete(api: ApiClient, items: list[tuple[UploadPlan, list[tuple[int, str]] | None]]) -> list[CompleteResult]:
    """Ask the server to verify and record finished uploads (with their parts' ETags for multipart)."""
    results: list[CompleteResult] = []
    for batch in _batches(items):
        body = {
            "uploads": [
                {"upload_id": plan.upload_id}
                if parts is None
                else {"upload_id": plan.upload_id, "parts": [{"part_number": n, "etag": e} for n, e in parts]}
                for plan, parts in batch
            ]
        }
        total = sum(plan.size for plan, _ in batch)
        # The server re-hashes what it cannot trust the store to have checked: allow it time to read.
        timeout = (10.0, 60.0 + total / (20 << 20))
        answer = api.call("POST", "/api/uploads/complete", json_body=body, idempotent=True, timeout=timeout)
        results.extend(CompleteResult(**item) for item in answer["results"])
    return results


def store_inline(api: ApiClient, project_id: str | None, blobs: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """Send small blobs (SHA-1, bytes) for the server to store; returns the blobs it refused: SHA-1 -> why
    (their bytes do not have that SHA-1)."""
    refused: dict[str, str] = {}
    for batch in _inline_batches(blobs):
        body: dict[str, Any] = {
            "blobs": [{"sha1": sha1, "data": base64.b64encode(data).decode("ascii")} for sha1, data in batch]
        }
        if project_id:
            body["project_id"] = project_id
        answer = api.call("POST", "/api/blobs/inline", json_body=body, idempotent=True)
        refused.update({item["sha1"]: item["message"] for item in answer["results"] if item["status"] != "stored"})
    return refused


def _inline_batches(blobs: Iterable[tuple[str, bytes]]) -> Iterator[list[tuple[str, bytes]]]:
    batch: list[tuple[str, bytes]] = []
    size = 0
    for sha1, data in blobs:
        if batch and (len(batch) == BATCH or size + len(data) > INLINE_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((sha1, data))
        size += len(data)
    if batch:
        yield batch


def find(api: ApiClient, sha1s: list[str], project_id: str | None) -> tuple[dict[str, FoundBlob], bool]:
    """Where to download each hash from (absent: not found in any project this client may read), and whether
    the server recognized this client as registered."""
    found: dict[str, FoundBlob] = {}
    registered = False
    for batch in _batches(sha1s):
        body: dict[str, Any] = {"sha1s": batch}
        if project_id:
            body["project_id"] = project_id
        answer = api.call("POST", "/api/blobs/find", json_body=body, idempotent=True)
        registered = bool(answer.get("registered"))
        for item in answer["results"]:
            if item["found"]:
                offset = None if item.get("offset") is None else int(item["offset"])
                sha1 = item["sha1"]
                found[sha1] = FoundBlob(sha1, int(item["size"]), item["project_id"], item["url"], offset)
    return found, registered


def _plan(item: dict[str, Any], size: int) -> UploadPlan:
    if item["status"] == "exists":
        return UploadPlan(sha1=item["sha1"], size=size, exists=True)
    return UploadPlan(
        sha1=item["sha1"],
        size=size,
        exists=False,
        upload_id=item["upload_id"],
        method=item["method"],
        url=item.get("url") or "",
        headers=dict(item.get("headers") or {}),
        part_size=int(item.get("part_size") or 0),
        num_parts=int(item.get("num_parts") or 0),
        part_urls={int(n): url for n, url in (item.get("part_urls") or {}).items()},
    )


def _batches(items: list[Any]) -> list[list[Any]]:
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
