"""Layer 3: local mutables, one file per key at ``mutables/<key>`` holding the UTF-8 value.

Writes are atomic (temp file + rename, fsynced), so a reader sees the old or the new value, never a mix.
A folder is deleted by renaming it aside first, so readers see all of its keys or none.

In a shared directory mutables are shared values: any member may set or delete any of them (their directories
are not sticky). What no member can do is redirect another's reads or writes: nothing under ``mutables/`` is
followed as a symlink (a link planted at ``mutables/@folder`` is refused), and every step goes through the
descriptor of its directory.
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
        tree = self.perms.tree
        try:
            if tree is None:
                return path.read_bytes().decode("utf-8")
            found = tree.read(path)
            return None if found is None else found[0].decode("utf-8")
        except (FileNotFoundError, NotADirectoryError):
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
            with self.perms.directory(path.parent) as (dir_fd, _):
                os.unlink(path.name, dir_fd=dir_fd)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    def delete_folder(self, folder_key: str) -> bool:
        """Delete every key under ``folder_key``; return whether the folder existed."""
        path = self.directory.joinpath(*validate_folder_key(folder_key))
        doomed = f".{short_stem(path.name)}.{secrets.token_hex(6)}.deleting{TEMP_SUFFIX}"
        try:
            with self.perms.directory(path.parent) as (dir_fd, _):
                os.rename(path.name, doomed, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(doomed, dir_fd=dir_fd)  # by descriptors: no link inside is followed
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True
