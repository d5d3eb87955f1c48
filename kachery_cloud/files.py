"""Layer 7: storing files in the local store, and loading content by URI: from the local store, else from
the projects this client can read on the API server (see :mod:`.fetching`)."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._context import local_directory
from ._os_errors import explain_permission_errors
from ._progress import progress_bar
from .config import ClientConfig, load_config
from .errors import IntegrityError, InvalidArgumentError, LocalFileError, NotFoundError
from .fetching import fetch_blob, fetch_blobs, remote_blob, remote_range
from .local import LocalDirectory
from .local.blobs import copy_file_into
from .local.fs import Permissions, atomic_write
from .local.hash_memo import FileFingerprint
from .protocol.uri import check_label, format_uri, parse_uri

StrPath = str | os.PathLike[str]


@explain_permission_errors
def store_file_local(filename: StrPath, label: str | None = None) -> str:
    """Copy a file into the local store and return its URI (``sha1://<hash>?label=<label>``).

    The file is read once, hashed while it is copied. Storing a file that is unchanged since it was last
    stored or linked reads nothing (hash memo).
    """
    check_label(label)
    path, st = regular_file(filename)
    return format_uri(copy_into_store(local_directory(), path, st), label)


def copy_into_store(local: LocalDirectory, path: Path, st: os.stat_result, *, quiet: bool | None = None) -> str:
    """Copy the regular file ``path`` (``st``: its stat) into the local store; return its SHA-1."""
    fingerprint = FileFingerprint.of(st)
    remembered = local.hash_memo.get(fingerprint)
    with progress_bar(st.st_size, f"storing {path.name}", quiet=quiet) as bar:
        if remembered is not None:  # reads nothing unless the blob has been removed from the store
            try:
                local.blobs.put(remembered, copy_file_into(path), size_hint=st.st_size, on_progress=bar.update)
            except IntegrityError:
                raise LocalFileError(f"{path} changed while it was being stored; try again") from None
            return remembered
        sha1 = local.blobs.add(copy_file_into(path), on_progress=bar.update)
    if FileFingerprint.of(os.stat(path)) != fingerprint:
        raise LocalFileError(f"{path} changed while it was being stored; try again once it is complete")
    local.hash_memo.put(fingerprint, sha1, path)
    return sha1


@explain_permission_errors
def link_file(filename: StrPath, label: str | None = None) -> str:
    """Make a file loadable by its URI without copying it; the file must not change afterwards.

    The path, size and modification time are recorded. If the file changes later, a load hashes it again
    and refuses it when the content no longer matches.
    """
    check_label(label)
    path, st = regular_file(filename)
    local = local_directory()
    sha1 = hash_with_memo(local, path, st)
    local.linked_files.record(sha1, path, FileFingerprint.of(st))
    return format_uri(sha1, label)


@explain_permission_errors
def load_file(
    uri: str, local_only: bool = False, dest: StrPath | None = None, *, quiet: bool | None = None
) -> str | None:
    """The local path of the content ``uri`` names, downloaded into the local store if needed; ``None`` if it
    is neither there nor in any project this client can read.

    With ``dest``, the content is copied there (atomically) and ``dest`` is returned. A download over a few
    MiB shows a progress bar unless ``quiet`` (or ``KACHERY_CLOUD_QUIET=1``).
    """
    try:
        path = _require_path(uri, local_only, quiet=quiet)
    except NotFoundError:
        return None
    if dest is not None:
        return _copy_to(path, Path(dest))
    return str(path)


@explain_permission_errors
def load_files(uris: Sequence[str], local_only: bool = False, *, quiet: bool | None = None) -> list[str | None]:
    """Local paths of many URIs (``None`` for content not available), downloading what is missing in parallel."""
    if isinstance(uris, str) or not isinstance(uris, Sequence):
        raise InvalidArgumentError("load_files needs a list of URIs; use load_file for one")
    sha1s = [parse_uri(uri).sha1 for uri in uris]
    config = load_config()
    local = local_directory(config)
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for sha1 in sha1s:
        found = _find_local(local, sha1)
        if found is not None:
            paths[sha1] = found[0]
        else:
            missing.append(sha1)
    if missing and not local_only:
        paths.update(fetch_blobs(config, local, missing, quiet=quiet))
    return [str(paths[sha1]) if sha1 in paths else None for sha1 in sha1s]


@explain_permission_errors
def load_file_info(uri: str, local_only: bool = False) -> dict[str, Any] | None:
    """Size and location of the content ``uri`` names, or ``None`` if it is not available.

    For content not in the local store, the server is asked (nothing is downloaded): ``local_path`` is then
    ``None`` and ``project_id`` says which project holds it.
    """
    parsed = parse_uri(uri)
    config = load_config()
    found = _find_local(local_directory(config), parsed.sha1)
    if found is not None:
        path, linked = found
        return {
            "uri": str(parsed),
            "sha1": parsed.sha1,
            "size": path.stat().st_size,
            "local_path": str(path),
            "linked": linked,
        }
    if local_only:
        return None
    try:
        blob = remote_blob(config, parsed.sha1)
    except NotFoundError:
        return None
    return {
        "uri": str(parsed),
        "sha1": parsed.sha1,
        "size": blob.size,
        "local_path": None,
        "linked": False,
        "project_id": blob.project_id,
    }


@explain_permission_errors
def load_bytes(
    uri: str,
    start: int | None = None,
    end: int | None = None,
    *,
    local_only: bool = False,
    write_to_stdout: bool = False,
) -> bytes | None:
    """Bytes ``start`` (inclusive) to ``end`` (exclusive) of the content, reading only that range.

    ``None`` bounds mean the start and the end of the content. Content that is not in the local store is not
    downloaded: only the range is fetched from the server (and, being a part, it cannot be checked against the
    content's hash). With ``write_to_stdout`` the bytes go to standard output and ``None`` is returned.
    """
    sha1 = parse_uri(uri).sha1
    config = load_config()
    found = _find_local(local_directory(config), sha1)
    if found is None:
        if local_only:
            raise NotFoundError(f"{uri} is not in the local store ({config.dir})")
        blob = remote_blob(config, sha1)
        start, end = _check_range(start, end, blob.size)
        data = remote_range(config, blob, start, end)
        if not write_to_stdout:
            return data
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return None
    path = found[0]
    size = path.stat().st_size
    start, end = _check_range(start, end, size)
    with open(path, "rb") as f:
        f.seek(start)
        if not write_to_stdout:
            return f.read(end - start)
        _copy_range_to_stdout(f, end - start)
        return None


@explain_permission_errors
def cat_file(uri: str, local_only: bool = False) -> None:
    """Write the content ``uri`` names to standard output (downloading it into the local store first)."""
    path = _require_path(uri, local_only)
    with open(path, "rb") as f:
        _copy_range_to_stdout(f, path.stat().st_size)


# ------------------------------------------------------------------------------------------ helpers


def regular_file(filename: StrPath) -> tuple[Path, os.stat_result]:
    if not isinstance(filename, (str, os.PathLike)):
        raise InvalidArgumentError(f"a file name must be a str or path, not {type(filename).__name__}")
    path = Path(os.path.abspath(filename))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise LocalFileError(f"no such file: {filename}") from None
    except OSError as e:
        raise LocalFileError(f"cannot access {filename}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise LocalFileError(f"{filename} is a directory; only regular files can be stored")
    if not stat.S_ISREG(st.st_mode):
        raise LocalFileError(f"{filename} is not a regular file")
    if not os.access(path, os.R_OK):
        raise LocalFileError(f"cannot read {filename}: permission denied")
    return path, st


def hash_with_memo(local: LocalDirectory, path: Path, st: os.stat_result, *, quiet: bool | None = None) -> str:
    with progress_bar(st.st_size, f"hashing {path.name}", quiet=quiet) as bar:
        return local.hash_memo.hash_file(path, st, bar.update)


def _find_local(local: LocalDirectory, sha1: str) -> tuple[Path, bool] | None:
    """The local path of ``sha1`` and whether it is a linked file."""
    path = local.blobs.find(sha1)
    if path is not None:
        return path, False

    def rehash(linked_path: Path) -> str:
        return hash_with_memo(local, linked_path, os.stat(linked_path))

    linked = local.linked_files.resolve(sha1, rehash)
    return (linked, True) if linked is not None else None


def _require_path(uri: str, local_only: bool, *, quiet: bool | None = None, config: ClientConfig | None = None) -> Path:
    """The local path of the content, downloaded first if needed and allowed. Raises :class:`NotFoundError`."""
    sha1 = parse_uri(uri).sha1
    config = config or load_config()
    local = local_directory(config)
    found = _find_local(local, sha1)
    if found is not None:
        return found[0]
    if local_only:
        raise NotFoundError(f"{uri} is not in the local store ({config.dir})")
    return fetch_blob(config, local, sha1, quiet=quiet)


def _copy_to(source: Path, dest: Path) -> str:
    if dest.is_dir():
        raise LocalFileError(f"dest {dest} is a directory; give the path of the file to write")
    if not dest.parent.is_dir():
        raise LocalFileError(f"cannot write {dest}: directory {dest.parent} does not exist")
    try:
        with atomic_write(dest, Permissions(multiuser=False), durable=False) as out:
            copy_file_into(source)(out)
    except PermissionError as e:
        raise LocalFileError(f"cannot write {dest}: {e.strerror}") from None
    return str(dest)


def _check_range(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    start = 0 if start is None else start
    end = size if end is None else end
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgumentError(f"{name} must be an int or None, not {type(value).__name__}")
    if not 0 <= start <= end <= size:
        raise InvalidArgumentError(f"invalid byte range {start}..{end} for content of size {size}")
    return start, end


def _copy_range_to_stdout(f: Any, length: int) -> None:
    out = sys.stdout.buffer
    remaining = length
    while remaining > 0:
        chunk = f.read(min(remaining, 1 << 20))
        if not chunk:
            break
        out.write(chunk)
        remaining -= len(chunk)
    out.flush()
