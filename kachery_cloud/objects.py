"""Layer 7: storing and loading Python objects (text, JSON, NumPy arrays, pickles) by content hash.

Arrays and pickles are serialized straight into the store (hashed on the way), never held in memory as
a second copy.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any, BinaryIO

from ._connection import require_writable
from ._context import local_directory
from ._os_errors import explain_permission_errors
from .config import ClientConfig, load_config
from .errors import IntegrityError, NotFoundError, SerializationError
from .files import _require_path, load_file
from .protocol.hashing import sha1_of_bytes
from .protocol.serialization import canonical_json_bytes, read_npy, read_pickle, write_npy, write_pickle
from .protocol.uri import check_label, format_uri, parse_uri
from .storing import upload_cached_blob


@explain_permission_errors
def store_text_local(text: str, label: str | None = None) -> str:
    """Store ``text`` (as UTF-8) in the local store and return its URI."""
    if not isinstance(text, str):
        raise SerializationError(f"store_text needs a str, not {type(text).__name__}")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SerializationError(f"the text is not valid Unicode (a lone surrogate at {e.start})") from None
    return _store_bytes_local(data, label)


@explain_permission_errors
def store_json_local(x: Any, label: str | None = None) -> str:
    """Store ``x`` as canonical JSON in the local store and return its URI."""
    return _store_bytes_local(canonical_json_bytes(x), label)


@explain_permission_errors
def store_npy_local(array: Any, label: str | None = None) -> str:
    """Store ``array`` in .npy format (no pickled objects) in the local store and return its URI."""
    return _store_serialized_local(lambda f: write_npy(array, f), label)


@explain_permission_errors
def store_pkl_local(x: Any, label: str | None = None) -> str:
    """Store ``x`` (plain containers, scalars, NumPy arrays) as a pickle in the local store."""
    return _store_serialized_local(lambda f: write_pickle(x, f), label)


@explain_permission_errors
def store_text(text: str, label: str | None = None) -> str:
    """Store ``text`` (as UTF-8) in the current project and the local store; return its URI."""
    config = _writable_config("store_text")
    return _upload(config, store_text_local(text, label))


@explain_permission_errors
def store_json(x: Any, label: str | None = None) -> str:
    """Store ``x`` as canonical JSON in the current project and the local store; return its URI."""
    config = _writable_config("store_json")
    return _upload(config, store_json_local(x, label))


@explain_permission_errors
def store_npy(array: Any, label: str | None = None) -> str:
    """Store ``array`` in .npy format (no pickled objects) in the current project and the local store."""
    config = _writable_config("store_npy")
    return _upload(config, store_npy_local(array, label))


@explain_permission_errors
def store_pkl(x: Any, label: str | None = None) -> str:
    """Store ``x`` (plain containers, scalars, NumPy arrays) as a pickle in the current project and locally."""
    config = _writable_config("store_pkl")
    return _upload(config, store_pkl_local(x, label))


@explain_permission_errors
def load_text(uri: str, local_only: bool = False) -> str | None:
    """The content ``uri`` names, decoded as UTF-8; ``None`` if not available."""
    data = _load_bytes_of(uri, local_only)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SerializationError(f"{uri} is not UTF-8 text: {e}") from None


@explain_permission_errors
def load_json(uri: str, local_only: bool = False) -> Any:
    """The JSON value stored at ``uri``; ``None`` if not available."""
    data = _load_bytes_of(uri, local_only)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as e:
        raise SerializationError(f"{uri} is not JSON: {e}") from None


@explain_permission_errors
def load_npy(uri: str, local_only: bool = False) -> Any:
    """The NumPy array stored at ``uri`` (never unpickling); ``None`` if not available."""
    if load_config().multiuser:  # read once and checked (see _load_bytes_of)
        data = _load_bytes_of(uri, local_only)
        return None if data is None else read_npy(io.BytesIO(data))
    path = load_file(uri, local_only=local_only)  # straight from the file: no second copy in memory
    return None if path is None else read_npy(path)


@explain_permission_errors
def load_pkl(uri: str, local_only: bool = False) -> Any:
    """The object pickled at ``uri``, loaded with a restricted unpickler; ``None`` if not available."""
    if load_config().multiuser:
        data = _load_bytes_of(uri, local_only)
        return None if data is None else read_pickle(io.BytesIO(data))
    path = load_file(uri, local_only=local_only)
    if path is None:
        return None
    with open(path, "rb") as f:
        return read_pickle(f)


def _writable_config(what: str) -> ClientConfig:
    config = load_config()
    require_writable(config, what)  # before anything is written locally
    return config


def _upload(config: ClientConfig, uri: str) -> str:
    """Send a blob just written to the local store to the current project."""
    upload_cached_blob(config, parse_uri(uri).sha1)
    return uri


def _load_bytes_of(uri: str, local_only: bool) -> bytes | None:
    """The content's bytes, read once. In a shared directory they are hashed as well: a file another member
    owns was checked when it was found, but its owner could change it before it is read."""
    config = load_config()
    try:
        path = _require_path(uri, local_only, config=config)
    except NotFoundError:
        return None
    data = path.read_bytes()
    if config.multiuser:
        sha1 = parse_uri(uri).sha1
        if sha1_of_bytes(data) != sha1:
            raise IntegrityError(f"{path} changed while it was being read: it no longer has SHA-1 {sha1}")
    return data


def _store_bytes_local(data: bytes, label: str | None) -> str:
    check_label(label)
    sha1 = sha1_of_bytes(data)
    local_directory().blobs.put(sha1, lambda f: f.write(data), size_hint=len(data))
    return format_uri(sha1, label)


def _store_serialized_local(write: Callable[[BinaryIO], None], label: str | None) -> str:
    check_label(label)
    return format_uri(local_directory().blobs.add(write), label)
