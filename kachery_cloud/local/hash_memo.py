"""Layer 3: remembers the SHA-1 of local files so that storing an unchanged file again reads nothing.

An entry is keyed by the file's (device, inode, size, mtime_ns) and also records ctime_ns, which the kernel
updates on every write and which no tool can set back: a file rewritten in place with the same size and a
restored mtime (``cp -p``, ``touch -d``) is hashed again. Entries live at ``hash_memo/<kk>/<key>`` as small
JSON files written atomically; a missing or unreadable entry just means hashing the file again.

In a shared directory an entry is trusted only if the reading user wrote it: another member could plant one
for a colleague's file (its stat is all that takes) and make her ``store_file`` return a URI of the planter's
choosing without uploading her data. Its key there includes the user's uid, so members never share entries.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import LocalFileError
from ..protocol.hashing import ProgressCallback, sha1_of_file
from .fs import Permissions, atomic_write, sweep_once

# Hashing a file smaller than this is cheaper than reading and writing a memo entry for it.
MEMO_MIN_BYTES = 1 << 20


@dataclass(frozen=True)
class FileFingerprint:
    """What identifies one version of a file without reading it."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileFingerprint:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HashMemo:
    """SHA-1 memo entries under ``directory``."""

    def __init__(self, directory: Path, perms: Permissions) -> None:
        self.directory = directory
        self.perms = perms

    def get(self, fingerprint: FileFingerprint) -> str | None:
        """The remembered SHA-1 of the file version ``fingerprint``, if any."""
        if fingerprint.size < MEMO_MIN_BYTES:
            return None
        try:
            record = json.loads(self._read_own(self._entry_path(fingerprint)))
        except (OSError, ValueError, LocalFileError):
            return None
        if not isinstance(record, dict) or record.get("fingerprint") != asdict(fingerprint):
            return None
        sha1 = record.get("sha1")
        return sha1 if isinstance(sha1, str) else None

    def put(self, fingerprint: FileFingerprint, sha1: str, path: Path) -> None:
        """Remember that the file version ``fingerprint`` (last seen at ``path``) has SHA-1 ``sha1``."""
        if fingerprint.size < MEMO_MIN_BYTES:
            return
        record = {"sha1": sha1, "fingerprint": asdict(fingerprint), "path": str(path)}
        # Not fsynced: an entry lost or torn by a power failure is unreadable JSON, which means "hash again".
        # Entries are spread over 256 directories, one of which may not be written again for a long time:
        # the next process to write any entry removes a killed writer's leftover in all of them.
        sweep_once(self.directory, self.perms, with_subdirectories=True)
        try:
            with atomic_write(self._entry_path(fingerprint), self.perms, durable=False) as f:
                f.write(json.dumps(record).encode("utf-8"))
        except LocalFileError:
            # In a shared directory another member may have made the entry's directory unusable, or taken its
            # name: the memo only saves reading a file again, so it goes without.
            if not self.perms.multiuser:
                raise

    def hash_file(self, path: Path, st: os.stat_result, on_progress: ProgressCallback | None = None) -> str:
        """SHA-1 of the regular file ``path`` whose current stat is ``st``, from the memo when possible.

        Raises :class:`LocalFileError` if the file changes while it is being read.
        """
        before = FileFingerprint.of(st)
        remembered = self.get(before)
        if remembered is not None:
            return remembered
        sha1 = sha1_of_file(path, on_progress)
        if FileFingerprint.of(os.stat(path)) != before:
            raise LocalFileError(f"{path} changed while it was being read; try again once it is complete")
        self.put(before, sha1, path)
        return sha1

    def _read_own(self, path: Path) -> bytes:
        tree = self.perms.tree
        if tree is None:
            return path.read_bytes()
        found = tree.read(path)
        if found is None:
            raise FileNotFoundError(path)
        data, st = found
        if st.st_uid != tree.uid:
            raise LocalFileError(f"{path} was written by another user")  # not trusted, whatever it says
        return data

    def _entry_path(self, fp: FileFingerprint) -> Path:
        identity = f"{fp.dev}:{fp.ino}:{fp.size}:{fp.mtime_ns}"
        if self.perms.multiuser:
            identity += f":uid{os.geteuid()}"
        key = hashlib.sha1(identity.encode()).hexdigest()
        return self.directory / key[:2] / key
