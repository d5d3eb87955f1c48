"""Layer 7: bringing content from the API server's projects into the local store, or reading a range of it.

Several processes loading one URI at once download it once: each takes the blob's lock, then looks in the
store again before asking the server (``load_files`` takes locks for big blobs only). A download is hashed
while it streams into a temp file and renamed into the store only if it has the expected SHA-1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ._connection import api_client
from ._progress import TRANSFER_PROGRESS_MIN_BYTES, ProgressBar, progress_bar
from .api import blobs as blobs_api
from .api.blobs import FoundBlob
from .config import ClientConfig
from .errors import IntegrityError, NotFoundError, ServerUnreachableError
from .local import LocalDirectory
from .local.blobs import LOCK_MIN_BYTES

if TYPE_CHECKING:  # requests loads on the first download, not with `import kachery_cloud`
    from .transfer.download import UrlSource

MAX_PARALLEL_DOWNLOADS = 8
FETCH_CHUNK = 5000  # blobs asked for and downloaded at a time by load_files


def fetch_blob(config: ClientConfig, local: LocalDirectory, sha1: str, *, quiet: bool | None = None) -> Path:
    """The blob's path in the local store, downloaded first if needed. Raises :class:`NotFoundError`."""

    def download() -> Path:  # the server is asked only once the lock is ours and the blob still missing
        blob = remote_blob(config, sha1)
        with progress_bar(blob.size, f"loading {sha1[:12]}", quiet=quiet, min_bytes=TRANSFER_PROGRESS_MIN_BYTES) as bar:
            return _download(config, local, blob, bar)

    return _under_lock(local, sha1, download)


def fetch_blobs(
    config: ClientConfig, local: LocalDirectory, missing: list[str], *, quiet: bool | None = None
) -> dict[str, Path]:
    """Paths of those of ``missing`` (not in the local store) found in a readable project, downloaded in
    parallel. Each download looks in the store again under the blob's lock, as another process may have
    fetched it meanwhile."""
    missing = list(dict.fromkeys(missing))
    paths: dict[str, Path] = {}
    # What the server answers (a URL per blob) is held only for one chunk at a time, so that loading any
    # number of files takes bounded memory.
    chunks = [missing[i : i + FETCH_CHUNK] for i in range(0, len(missing), FETCH_CHUNK)]
    for number, chunk in enumerate(chunks, 1):
        part = f" (part {number} of {len(chunks)})" if len(chunks) > 1 else ""
        paths.update(_fetch_chunk(config, local, chunk, part, quiet))
    return paths


def _fetch_chunk(
    config: ClientConfig, local: LocalDirectory, missing: list[str], part: str, quiet: bool | None
) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    with _explain_unreachable(config, missing):
        found, _registered = blobs_api.find(api_client(config), missing, config.project)
    blobs = [found[sha1] for sha1 in missing if sha1 in found]
    del found
    total = sum(blob.size for blob in blobs)
    # Blobs of one pack come in one ranged GET; the others one GET each.
    packs: dict[str, list[FoundBlob]] = {}
    for blob in blobs:
        if blob.offset is not None:
            packs.setdefault(blob.url, []).append(blob)
    jobs: list[list[FoundBlob]] = [group for group in packs.values() if len(group) > 1]
    jobs += [[blob] for blob in blobs if blob.offset is None or len(packs[blob.url]) == 1]
    description = f"loading {len(blobs)} files{part}"
    with progress_bar(total, description, quiet=quiet, min_bytes=TRANSFER_PROGRESS_MIN_BYTES) as bar:

        def fetch(job: list[FoundBlob]) -> list[tuple[str, Path]]:
            if len(job) > 1:
                return _download_from_pack(config, local, job, bar)
            blob = job[0]
            if blob.size < LOCK_MIN_BYTES:  # downloading a small blob twice costs less than its lock file
                return [(blob.sha1, local.blobs.find(blob.sha1) or _download(config, local, blob, bar))]
            return [(blob.sha1, _under_lock(local, blob.sha1, lambda: _download(config, local, blob, bar)))]

        if len(jobs) == 1:
            paths.update(fetch(jobs[0]))
        elif jobs:
            with ThreadPoolExecutor(min(MAX_PARALLEL_DOWNLOADS, len(jobs)), thread_name_prefix="kachery-load") as pool:
                for fetched in pool.map(fetch, jobs):
                    paths.update(fetched)
    return paths


def _download_from_pack(
    config: ClientConfig, local: LocalDirectory, blobs: list[FoundBlob], bar: ProgressBar
) -> list[tuple[str, Path]]:
    """Small blobs of one pack: the range of the pack that covers them in one GET, then each blob verified on
    its way into the store. (No per-blob locks: two processes doing this at once cost one small GET more.)"""
    from .transfer.download import fetch_range

    start = min(blob.offset or 0 for blob in blobs)
    end = max((blob.offset or 0) + blob.size for blob in blobs)
    data = memoryview(fetch_range(_url_source(config, blobs[0]), start, end, f"loading {len(blobs)} small files"))
    stored: list[tuple[str, Path]] = []
    for blob in blobs:
        at = (blob.offset or 0) - start
        part = data[at : at + blob.size]
        try:
            path = local.blobs.put(blob.sha1, lambda out, part=part: out.write(part), on_progress=bar.update)
        except IntegrityError as e:
            raise IntegrityError(
                f"the object store sent bytes that are not sha1://{blob.sha1}; nothing was cached ({e})"
            ) from None
        stored.append((blob.sha1, path))
    return stored


def remote_blob(config: ClientConfig, sha1: str, project_id: str | None = None) -> FoundBlob:
    """Where the server has ``sha1`` (size, project, URL), preferring ``project_id`` (default: the configured
    project). Raises :class:`NotFoundError`."""
    with _explain_unreachable(config, [sha1]):
        found, registered = blobs_api.find(api_client(config), [sha1], project_id or config.project)
    if sha1 not in found:
        raise NotFoundError(not_found_message(config, sha1, registered))
    return found[sha1]


def remote_range(config: ClientConfig, blob: FoundBlob, start: int, end: int) -> bytes:
    """Bytes ``start``..``end`` of a blob on the server, transferring only those (not cached, not hashed:
    a part of a blob cannot be checked against the blob's hash)."""
    from .transfer.download import fetch_range

    base = blob.offset or 0  # a blob in a pack is a range of the pack
    return fetch_range(_url_source(config, blob), base + start, base + end, f"reading {blob.sha1}")


def not_found_message(config: ClientConfig, sha1: str, registered: bool) -> str:
    where = f"the local store ({config.dir}) or any project this client can read on {config.effective_api_url}"
    message = f"sha1://{sha1} is not in {where}"
    if config.ephemeral:
        return f"{message} (ephemeral mode: only public projects are searched)"
    if not registered:
        return (
            f"{message} (this client is not registered with that server, so only public projects were searched; "
            "run kachery-cloud-init)"
        )
    return message


@contextlib.contextmanager
def _explain_unreachable(config: ClientConfig, sha1s: list[str]) -> Iterator[None]:
    try:
        yield
    except ServerUnreachableError as e:
        what = f"sha1://{sha1s[0]}" + (f" (and {len(sha1s) - 1} more)" if len(sha1s) > 1 else "")
        raise ServerUnreachableError(
            f"{what} is not in the local store ({config.dir}), and {e}. To look only locally, use "
            "local_only=True (CLI: --local-only)"
        ) from None


def _under_lock(local: LocalDirectory, sha1: str, download: Callable[[], Path]) -> Path:
    """The blob's path: found in the store once its lock is ours (another process may have fetched it while
    we waited), else what ``download`` returns."""
    with local.blobs.lock(sha1):
        return local.blobs.find(sha1) or download()


def _download(config: ClientConfig, local: LocalDirectory, blob: FoundBlob, bar: ProgressBar) -> Path:
    from .transfer.download import download_blob

    url = _url_source(config, blob)
    what = f"loading {blob.sha1}"
    try:
        return local.blobs.put(
            blob.sha1,
            lambda out: download_blob(url, blob.size, out, what, blob.offset),
            size_hint=0,
            on_progress=bar.update,
        )
    except IntegrityError as e:
        raise IntegrityError(
            f"the object store sent bytes that are not sha1://{blob.sha1}; nothing was cached ({e})"
        ) from None


def _url_source(config: ClientConfig, blob: FoundBlob) -> UrlSource:
    current = [blob.url]

    def url(refresh: bool) -> str:
        if refresh:  # the URL expired (or was refused): ask for a fresh one, preferring the same project
            current[0] = remote_blob(config, blob.sha1, blob.project_id).url
        return current[0]

    return url
