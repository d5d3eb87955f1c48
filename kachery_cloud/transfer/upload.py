"""Uploads of files to the object store as the API server planned them: one presigned PUT per small blob,
or the parts of a multipart upload, all sent in parallel by a bounded pool of threads.

Memory stays bounded: a part is read just before it is sent, and the bytes in flight are capped by
:data:`MEMORY_BUDGET_BYTES`. Part URLs are fetched in batches as the parts reach them, so none expires during
a long upload; a refused (expired) URL is replaced by a fresh one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path

import requests

from ..api import blobs as blobs_api
from ..api.blobs import UploadPlan
from ..api.client import ApiClient
from ..errors import IntegrityError
from .store_http import StoreRequestError, send_with_retries

MAX_WORKERS = 8
MEMORY_BUDGET_BYTES = 64 << 20  # keeps a client storing any size under ~150 MiB of RSS
PART_URL_BATCH = 64

Parts = list[tuple[int, str]] | None  # multipart: (part number, ETag) of every part; None for a single PUT


class UploadExpiredError(StoreRequestError):
    """The store no longer knows the multipart upload (aborted as abandoned): plan the blob again."""


def upload_files(
    api: ApiClient, plans: list[UploadPlan], sources: dict[str, Path], on_progress: Callable[[int], None]
) -> list[tuple[UploadPlan, Parts]]:
    """Send every blob of ``plans`` (not already present) from the file ``sources[sha1]``.

    Returns what completing the uploads needs: per plan, the ETags of its parts (None for a single PUT).
    """
    tasks: list[tuple[UploadPlan, int]] = []
    for plan in plans:
        if plan.exists:
            continue
        if plan.method == "put":
            tasks.append((plan, 0))
        else:
            tasks.extend((plan, n) for n in range(1, plan.num_parts + 1))
    sender = _Sender(api, sources, on_progress)
    outcomes = [sender.send(*task) for task in tasks] if len(tasks) <= 1 else _run_all(sender.send, tasks)
    etags: dict[str, list[tuple[int, str]]] = {}
    for plan, part_number, etag in outcomes:
        if part_number:
            etags.setdefault(plan.upload_id, []).append((part_number, etag))
    return [
        (plan, None if plan.method == "put" else sorted(etags.get(plan.upload_id, [])))
        for plan in plans
        if not plan.exists
    ]


def _run_all(
    send: Callable[[UploadPlan, int], tuple[UploadPlan, int, str]], tasks: list[tuple[UploadPlan, int]]
) -> list[tuple[UploadPlan, int, str]]:
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(tasks)), thread_name_prefix="kachery-upload") as pool:
        futures: list[Future[tuple[UploadPlan, int, str]]] = [pool.submit(send, *task) for task in tasks]
        done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                pool.shutdown(wait=True, cancel_futures=True)  # stop sending; the first error is what matters
                raise future.exception()  # type: ignore[misc]
        return [future.result() for future in futures]


class _Sender:
    def __init__(self, api: ApiClient, sources: dict[str, Path], on_progress: Callable[[int], None]) -> None:
        self.api = api
        self.sources = sources
        self.on_progress = on_progress
        self.budget = _ByteBudget(MEMORY_BUDGET_BYTES)
        self._plan_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._free_buffers: list[bytearray] = []

    def send(self, plan: UploadPlan, part_number: int) -> tuple[UploadPlan, int, str]:
        """PUT one blob (part 0) or one part; return its ETag."""
        start, length = (0, plan.size) if part_number == 0 else plan.part_range(part_number)
        source = self.sources[plan.sha1]
        with self.budget.take(length), self._buffer(length) as data:
            _read_into(source, start, data)
            etag = self._put(plan, part_number, data, source)
        self.on_progress(length)
        return plan, part_number, etag

    @contextlib.contextmanager
    def _buffer(self, length: int) -> Iterator[memoryview]:
        """A buffer of ``length`` bytes, reused across parts: a fresh 16 MiB buffer per part made glibc's malloc
        keep far more memory than the budget (its mmap threshold rises after the first free)."""
        with self._locks_lock:
            fitting = [b for b in self._free_buffers if len(b) >= length]
            buffer = min(fitting, key=len) if fitting else bytearray(length)
            if fitting:
                self._free_buffers.remove(buffer)
        try:
            yield memoryview(buffer)[:length]
        finally:
            with self._locks_lock:
                self._free_buffers.append(buffer)

    def _put(self, plan: UploadPlan, part_number: int, data: memoryview, source: Path) -> str:
        what = f"uploading {source.name}" + (f" (part {part_number} of {plan.num_parts})" if part_number else "")

        def target(refresh: bool) -> tuple[str, dict[str, str]]:
            return self._url(plan, part_number, refresh=refresh)

        # A single PUT is signed with If-None-Match: * where the store honours it, so 412 means the object is
        # already there (a retry whose first answer was lost, or another client storing the same blob): the
        # completion then checks what the store holds, so it is not taken on trust.
        def accepted(r: requests.Response) -> bool:
            return r.status_code == 200 or (part_number == 0 and r.status_code == 412)

        try:
            response = send_with_retries("PUT", target, what, accepted, data=data)
        except StoreRequestError as error:
            if error.code in ("BadDigest", "InvalidDigest"):
                raise IntegrityError(
                    f"the object store refused the bytes of {source} as not having SHA-1 {plan.sha1}: the file "
                    "changed after it was hashed; store it again once it no longer changes"
                ) from None
            if error.code == "NoSuchUpload":
                raise UploadExpiredError(str(error), status=error.status, code=error.code) from None
            raise
        return response.headers.get("ETag", "")

    def _url(self, plan: UploadPlan, part_number: int, *, refresh: bool) -> tuple[str, dict[str, str]]:
        """The URL (and headers) to send with, fetching or renewing it from the API server when needed."""
        if part_number == 0:
            if refresh:
                with self._lock_of(plan):
                    blobs_api.upload_urls(self.api, plan, [])
            return plan.url, plan.headers
        if refresh or part_number not in plan.part_urls:
            with self._lock_of(plan):
                if refresh or part_number not in plan.part_urls:  # another thread may have fetched it meanwhile
                    last = min(plan.num_parts, part_number + PART_URL_BATCH - 1)
                    numbers = [n for n in range(part_number, last + 1) if refresh or n not in plan.part_urls]
                    blobs_api.upload_urls(self.api, plan, numbers or [part_number])
        return plan.part_urls[part_number], {}

    def _lock_of(self, plan: UploadPlan) -> threading.Lock:
        with self._locks_lock:
            return self._plan_locks.setdefault(plan.upload_id, threading.Lock())


def _read_into(path: Path, start: int, buffer: memoryview) -> None:
    """Fill ``buffer`` with the file's bytes from ``start`` on."""
    with open(path, "rb") as f:
        filled = 0
        while filled < len(buffer):
            n = os.preadv(f.fileno(), [buffer[filled:]], start + filled)
            if n == 0:
                raise IntegrityError(
                    f"{path} became shorter while it was being stored; store it again once it is complete"
                )
            filled += n


class _ByteBudget:
    """At most ``limit`` bytes held at once across threads (a single larger request still goes through)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def take(self, n: int) -> Iterator[None]:
        n = min(n, self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()
