"""Layer 3: records of files made loadable by hash without copying them (``link_file``).

A record at ``linked_files/sha1/aa/bb/cc/<sha1>`` holds the file's absolute path and fingerprint. While the
fingerprint still matches, the file is served as is. When it does not, the file is hashed again: still the
same content, the record is refreshed; different content (or no file), the record is dropped and the file
is refused, so a load never returns bytes with the wrong hash.

In a shared directory, a record another member wrote is never taken on its fingerprint: the file it names is
hashed (through the reader's own hash memo), since a planted record could name any file the reader can read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ..errors import LocalFileError
from .fs import Permissions, atomic_write
from .hash_memo import FileFingerprint

logger = logging.getLogger("kachery_cloud")


class LinkedFiles:
    """Link records under ``directory`` (``<KACHERY_CLOUD_DIR>/linked_files/sha1``)."""

    def __init__(self, directory: Path, perms: Permissions) -> None:
        self.directory = directory
        self.perms = perms

    def record(self, sha1: str, path: Path, fingerprint: FileFingerprint) -> None:
        """Remember that ``path``, in the version ``fingerprint``, has SHA-1 ``sha1``."""
        record = {"sha1": sha1, "path": str(path), "fingerprint": asdict(fingerprint)}
        with atomic_write(self._record_path(sha1), self.perms, durable=True) as f:
            f.write(json.dumps(record).encode("utf-8"))

    def resolve(self, sha1: str, rehash: Callable[[Path], str]) -> Path | None:
        """The linked file for ``sha1`` if it still has that content; ``rehash(path)`` is called if unsure."""
        record_path = self._record_path(sha1)
        own = True
        try:
            tree = self.perms.tree
            if tree is None:
                text = record_path.read_bytes()
            else:
                found = tree.read(record_path)
                if found is None:
                    return None
                text, st = found
                own = st.st_uid == tree.uid
            record = json.loads(text)
            path = Path(record["path"])
            recorded = record["fingerprint"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, LocalFileError):
            logger.warning("ignoring unreadable link record %s", record_path)
            return None
        try:
            current = FileFingerprint.of(os.stat(path))
        except OSError:
            self._drop(record_path, f"linked file {path} for sha1://{sha1} is gone")
            return None
        if own and asdict(current) == recorded:
            return path
        actual = rehash(path)
        if actual != sha1:
            self._drop(
                record_path,
                f"linked file {path} changed since it was linked: it should have SHA-1 {sha1} but has {actual}",
            )
            return None
        if own:
            self.record(sha1, path, current)
        return path

    def _drop(self, record_path: Path, reason: str) -> None:
        logger.warning("%s; removing the link", reason)
        with (
            contextlib.suppress(OSError, LocalFileError),  # another member's record in a sticky directory stays
            self.perms.directory(record_path.parent) as (dir_fd, _),
        ):
            os.unlink(record_path.name, dir_fd=dir_fd)

    def _record_path(self, sha1: str) -> Path:
        return self.directory / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1
