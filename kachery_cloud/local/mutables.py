"""Layer 3: local mutables, one file per key at ``mutables/<key>`` holding the UTF-8 value.

Writes are atomic (temp file + rename, fsynced), so a reader sees the old or the new value, never a mix.
A folder is deleted by renaming it aside first, so readers see all of its keys or none.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

from ..protocol.mutable_key import encode_mutable_value, validate_folder_key, validate_mutable_key
from .fs import TEMP_SUFFIX, Permissions, atomic_write, short_stem


class LocalMutables:
    """Mutables under ``directory`` (``<KACHERY_CLOUD_DIR>/mutables``)."""

    def __init__(self, directory: Path, perms: Permissions) -> None:
        self.directory = directory
        self.perms = perms

    def get(self, key: str) -> str | None:
        path = self.directory.joinpath(*validate_mutable_key(key))
        try:
            return path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            return None

    def set(self, key: str, value: str) -> None:
        path = self.directory.joinpath(*validate_mutable_key(key))
        data = encode_mutable_value(value, max_bytes=None)  # a file of its own: no size limit
        with atomic_write(path, self.perms, durable=True) as f:
            f.write(data)

    def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        path = self.directory.joinpath(*validate_mutable_key(key))
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def delete_folder(self, folder_key: str) -> bool:
        """Delete every key under ``folder_key``; return whether the folder existed."""
        path = self.directory.joinpath(*validate_folder_key(folder_key))
        doomed = path.parent / f".{short_stem(path.name)}.{secrets.token_hex(6)}.deleting{TEMP_SUFFIX}"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return False
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(doomed)
        return True
