"""Layer 7: storing files and cached blobs in the current project on the API server.

A store asks the server, in one batch, which blobs the project lacks; sends only those, straight to the
object store; then asks the server to verify and record them. Content the project already has costs one
request and no bytes. URIs are the same as the local variants give.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._connection import api_client, require_writable
from ._context import local_directory
from ._os_errors import explain_permission_errors
from ._progress import TRANSFER_PROGRESS_MIN_BYTES, progress_bar
from .api import blobs as blobs_api
from .config import ClientConfig, load_config
from .errors import IntegrityError, InvalidArgumentError, QuotaExceededError, ServerError
from .files import StrPath, copy_into_store, hash_with_memo, regular_file
from .protocol.uri import check_label, format_uri

if TYPE_CHECKING:  # requests loads on first use
    from .api.client import ApiClient

_ROUNDS = 3  # plan-upload-complete rounds before giving up on blobs the server did not record


@explain_permission_errors
def store_file(
    filename: StrPath, label: str | None = None, cache_locally: bool = False, *, quiet: bool | None = None
) -> str:
    """Upload a file to the current project and return its URI (``sha1://<hash>?label=<label>``).

    Nothing is sent if the project has the content already. With ``cache_locally`` the file is also copied
    into the local store (and uploaded from there).
    """
    return store_files([filename], [label], cache_locally=cache_locally, quiet=quiet)[0]


@explain_permission_errors
def store_files(
    filenames: Sequence[StrPath],
    labels: Sequence[str | None] | None = None,
    cache_locally: bool = False,
    *,
    quiet: bool | None = None,
) -> list[str]:
    """Upload many files in one batch, in parallel; return their URIs in the same order."""
    if isinstance(filenames, (str, os.PathLike)) or not isinstance(filenames, Sequence):
        raise InvalidArgumentError("store_files needs a list of file names; use store_file for one file")
    if labels is not None and len(labels) != len(filenames):
        raise InvalidArgumentError(f"{len(filenames)} files but {len(labels)} labels")
    for label in labels or ():
        check_label(label)
    config = load_config()
    require_writable(config, "store_files" if len(filenames) != 1 else "store_file")
    local = local_directory(config)
    sources: dict[str, tuple[Path, int]] = {}
    sha1s: list[str] = []
    for filename in filenames:
        path, st = regular_file(filename)
        if cache_locally:
            sha1 = copy_into_store(local, path, st, quiet=quiet)
            source = local.blobs.path(sha1)
        else:
            sha1 = hash_with_memo(local, path, st, quiet=quiet)  # reads nothing when the memo knows this file
            source = path
        sources.setdefault(sha1, (source, st.st_size))
        sha1s.append(sha1)
    upload_blobs(config, sources, quiet=quiet)
    return [format_uri(sha1, labels[i] if labels else None) for i, sha1 in enumerate(sha1s)]


def upload_blobs(config: ClientConfig, sources: dict[str, tuple[Path, int]], *, quiet: bool | None = None) -> None:
    """Make sure the current project has each blob ``sha1`` of ``sources``, sending it from the file given."""
    from .transfer.upload import UploadExpiredError, upload_files  # requests loads on first use

    api = api_client(config)
    small = {sha1: path for sha1, (path, size) in sources.items() if size <= blobs_api.INLINE_MAX_BYTES}
    if small:
        _store_inline(api, config, small)
    pending = {sha1: source for sha1, source in sources.items() if sha1 not in small}
    if not pending:
        return
    for _round in range(_ROUNDS):
        plans = blobs_api.need(api, config.project, [(sha1, size) for sha1, (_, size) in pending.items()])
        to_send = [plan for plan in plans if not plan.exists]
        if not to_send:
            return
        paths = {sha1: path for sha1, (path, _) in pending.items()}
        total = sum(plan.size for plan in to_send)
        description = f"storing {paths[to_send[0].sha1].name}" if len(to_send) == 1 else f"storing {len(to_send)} files"
        with progress_bar(total, description, quiet=quiet, min_bytes=TRANSFER_PROGRESS_MIN_BYTES) as bar:
            try:
                sent = upload_files(api, plans, paths, bar.update)
            except UploadExpiredError:
                continue  # an upload was aborted as abandoned while we sent it: plan again
        sha1_of_upload = {plan.upload_id: plan.sha1 for plan, _ in sent}
        again: dict[str, tuple[Path, int]] = {}
        for result in blobs_api.complete(api, sent):
            sha1 = sha1_of_upload[result.upload_id]
            if result.status == "stored":
                continue
            if result.status == "mismatch":
                raise IntegrityError(
                    f"{paths[sha1]} was not stored: {result.message}; it probably changed while it was being stored"
                )
            if result.status == "quota_exceeded":
                raise QuotaExceededError(result.message, error_code="quota_exceeded", status=403)
            again[sha1] = pending[sha1]  # not uploaded, incomplete, or unknown to the server: plan it again
        if not again:
            return
        pending = again
    raise ServerError(
        f"the server did not record {len(pending)} upload(s) after {_ROUNDS} attempts, e.g. "
        f"{next(iter(pending.values()))[0]}; try again",
        error_code="upload_failed",
    )


def _store_inline(api: ApiClient, config: ClientConfig, paths: dict[str, Path]) -> None:
    """Small blobs go to the server inside the request: one round trip for up to 1000 of them."""
    blobs = ((sha1, path.read_bytes()) for sha1, path in paths.items())  # read batch by batch, not all at once
    refused = blobs_api.store_inline(api, config.project, blobs)
    if refused:
        sha1, message = next(iter(refused.items()))
        raise IntegrityError(f"{paths[sha1]} was not stored: {message}; it probably changed while it was being stored")


def upload_cached_blob(config: ClientConfig, sha1: str) -> None:
    """Make sure the current project has the blob ``sha1`` of the local store."""
    path = local_directory(config).blobs.path(sha1)
    upload_blobs(config, {sha1: (path, path.stat().st_size)})
