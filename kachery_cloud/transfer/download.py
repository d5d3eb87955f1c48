"""Downloads from the object store: whole blobs streamed into a writer (which hashes them), resuming where a
dropped connection left off, and byte ranges.

The caller verifies: a blob's bytes go through :meth:`BlobStore.put`, which hashes them on the way to a temp
file and keeps them only if they have the expected SHA-1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

import requests

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

UrlSource = Callable[[bool], str]  # url(refresh): the current URL, or a fresh one from the API server


def stream_blob(url: UrlSource, size: int, out: BinaryIO, what: str) -> None:
    """Write the ``size`` bytes of a blob to ``out``. A dropped connection resumes from the last byte received;
    an expired URL is replaced; other failures raise after :data:`MAX_ATTEMPTS` tries without progress."""
    received = 0
    failures = 0
    error: StoreRequestError | None = None
    while failures < MAX_ATTEMPTS:
        headers = {"Range": f"bytes={received}-"} if received else {}
        before = received
        try:
            with session().get(
                url(error is not None and error.needs_new_url), headers=headers, stream=True, timeout=TIMEOUT
            ) as response:
                if response.status_code not in (200, 206):
                    error = error_from(response, what)
                elif received and response.status_code != 206:
                    error = StoreRequestError(f"{what}: the object store ignored a range request", status=500)
                else:
                    error = None
                    for chunk in response.iter_content(CHUNK_BYTES):
                        received += len(chunk)
                        if received > size:
                            raise IntegrityError(f"{what}: the store sent more than the {size} bytes expected")
                        out.write(chunk)
        except requests.RequestException as e:
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
    """Bytes ``start`` (inclusive) to ``end`` (exclusive) of an object; only that range is transferred."""
    if end <= start:
        return b""
    headers = {"Range": f"bytes={start}-{end - 1}"}

    def whole_range(response: requests.Response) -> bool:  # 200: a store that ignores Range sends it all
        return response.status_code == 200 or (response.status_code == 206 and len(response.content) == end - start)

    try:
        response = send_with_retries("GET", lambda refresh: (url(refresh), headers), what, whole_range)
    except StoreRequestError as error:
        if error.status == 404:
            raise NotFoundError(f"{what}: the object store no longer has this blob ({error})") from None
        raise
    return response.content if response.status_code == 206 else response.content[start:end]
