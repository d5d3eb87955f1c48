"""Downloads from the object store: whole blobs into a writer (which hashes them), and byte ranges.

A small blob comes in one streamed GET that resumes where a dropped connection left off. A big one comes in
ranged GETs sent in parallel by a bounded pool of threads, handed to the writer in order as they arrive, so
hashing runs while the rest downloads and at most :data:`WINDOW` ranges are held in memory.

The caller verifies: a blob's bytes go through :meth:`BlobStore.put`, which hashes them on the way to a temp
file and keeps them only if they have the expected SHA-1.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import requests
import urllib3

from ..errors import IntegrityError, NotFoundError
from .store_http import (
    MAX_ATTEMPTS,
    TIMEOUT,
    StoreRequestError,
    connection_error,
    error_from,
    pause,
    send_with_retries,
    session,
)

CHUNK_BYTES = 1 << 20
RANGE_BYTES = 8 << 20  # one ranged GET
PARALLEL_MIN_BYTES = 2 * RANGE_BYTES  # smaller blobs come in one GET
MAX_WORKERS = 6
WINDOW = 8  # ranges requested but not yet written: bounds memory to WINDOW * RANGE_BYTES (64 MiB)

UrlSource = Callable[[bool], str]  # url(refresh): the current URL, or a fresh one from the API server


def download_blob(url: UrlSource, size: int, out: BinaryIO, what: str, offset: int | None = None) -> None:
    """Write the ``size`` bytes of a blob to ``out``, in order: in parallel ranges if it is big. With
    ``offset``, the blob is that range of a bigger object (a pack of small blobs)."""
    if size < PARALLEL_MIN_BYTES or offset is not None:
        stream_blob(url, size, out, what, offset)
        return
    # WINDOW buffers, reused: allocating a fresh 8 MiB buffer per range made glibc's malloc keep hundreds of
    # MiB (its mmap threshold rises after the first free, and each thread's arena holds on to what it had).
    free = [memoryview(bytearray(RANGE_BYTES)) for _ in range(min(WINDOW, -(-size // RANGE_BYTES)))]
    with ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="kachery-range") as pool:
        pending: deque[tuple[memoryview, Future[memoryview]]] = deque()
        start = 0
        try:
            while start < size or pending:
                while start < size and free:
                    end = min(size, start + RANGE_BYTES)
                    buffer = free.pop()
                    pending.append((buffer, pool.submit(_fetch_range_into, buffer, url, start, end, what)))
                    start = end
                buffer, future = pending.popleft()
                out.write(future.result())
                free.append(buffer)
        except BaseException:
            for _buffer, future in pending:
                future.cancel()
            raise


def _fetch_range_into(buffer: memoryview, url: UrlSource, start: int, end: int, what: str) -> memoryview:
    """Bytes ``start``..``end`` of a blob, streamed (with its retries) straight into ``buffer``; returns the part
    of it they fill."""
    view = buffer[: end - start]
    stream_blob(url, end - start, None, what, offset=start, into=view)
    return view


def stream_blob(
    url: UrlSource,
    size: int,
    out: BinaryIO | None,
    what: str,
    offset: int | None = None,
    *,
    into: memoryview | None = None,
) -> None:
    """Write the ``size`` bytes of a blob (at ``offset`` of the object, if given) to ``out``, or read them
    straight into the buffer ``into``. A dropped connection resumes from the last byte received; an expired URL
    is replaced; other failures raise after :data:`MAX_ATTEMPTS` tries without progress."""
    if size == 0:
        return  # nothing to fetch (and no valid range to ask for)
    # +1: room to notice a store sending too much (reading into ``into`` stops at its end; the hash checks it)
    buffer = memoryview(bytearray(min(CHUNK_BYTES, size + 1) if into is None else 0))
    received = 0
    failures = 0
    error: StoreRequestError | None = None
    while failures < MAX_ATTEMPTS:
        headers = {"Accept-Encoding": "identity"}  # the bytes as stored: the raw body is what is hashed
        if offset is not None:
            headers["Range"] = f"bytes={offset + received}-{offset + size - 1}"
        elif received:
            headers["Range"] = f"bytes={received}-"
        before = received
        try:
            with session().get(
                url(error is not None and error.needs_new_url), headers=headers, stream=True, timeout=TIMEOUT
            ) as response:
                if response.status_code not in (200, 206):
                    error = error_from(response, what)
                elif "Range" in headers and response.status_code != 206:
                    error = StoreRequestError(f"{what}: the object store ignored a range request", status=500)
                else:
                    error = None
                    # Raw reads into one reused buffer: what arrived before a connection dropped counts (the
                    # resume starts after it), and no chunk is allocated afresh.
                    while n := response.raw.readinto(
                        buffer if into is None else into[received : received + CHUNK_BYTES]
                    ):
                        if received + n > size:
                            raise IntegrityError(f"{what}: the store sent more than the {size} bytes expected")
                        if out is not None:
                            _write_local(out, buffer[:n])
                        received += n
        except _LocalWriteFailed as e:
            raise e.error from None  # a full disk is not a dropped connection: no retry
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:  # raw reads raise urllib3's
            error = connection_error(e, what)
        if error is None and received == size:
            return
        if error is None:
            error = StoreRequestError(f"{what}: the connection closed after {received} of {size} bytes")
        if error.status == 404:
            raise NotFoundError(f"{what}: the object store no longer has this blob ({error})")
        if not (error.transient or error.needs_new_url):
            raise error
        failures = 0 if received > before else failures + 1
        if failures and not (error.needs_new_url and failures == 1):
            pause(failures - 1)
    assert error is not None
    raise error


def fetch_range(url: UrlSource, start: int, end: int, what: str) -> bytes:
    """Bytes ``start`` (inclusive) to ``end`` (exclusive) of an object; only that range is transferred.

    The body is taken as the store sent it, never decoded: a blob is stored with no Content-Encoding, so one
    the store names (an unsigned header a store kept at upload) must not turn its bytes into others.
    """
    if end <= start:
        return b""
    headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
    error: StoreRequestError | None = None
    for attempt in range(MAX_ATTEMPTS):
        try:
            response = send_with_retries(
                "GET", lambda refresh: (url(refresh), headers), what, lambda r: r.status_code in (200, 206), stream=True
            )
        except StoreRequestError as e:
            if e.status == 404:
                raise NotFoundError(f"{what}: the object store no longer has this blob ({e})") from None
            raise
        try:
            body = response.raw.read(decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as e:  # dropped mid-body: ask again
            error = connection_error(e, what)
        else:
            if response.status_code == 206 and len(body) == end - start:
                return body
            if response.status_code == 200 and len(body) >= end:  # a store that ignores Range sends it all
                return body[start:end]
            error = StoreRequestError(f"{what}: the object store sent {len(body)} bytes for {end - start}")
        finally:
            response.close()
        if attempt + 1 < MAX_ATTEMPTS:
            pause(attempt)
    assert error is not None
    raise error


class _LocalWriteFailed(Exception):
    """Writing what arrived to the local file failed (a full disk, say): not an error of the connection."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _write_local(out: BinaryIO, data: memoryview) -> None:
    try:
        out.write(data)
    except OSError as e:
        raise _LocalWriteFailed(e) from e
