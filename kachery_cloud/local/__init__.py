"""Layer 3: the client directory (``$KACHERY_CLOUD_DIR``, default ``~/.kachery-cloud``) on disk.

::

    $KACHERY_CLOUD_DIR/
    ├── config.yaml                  api_url, project, multiuser
    ├── sha1/aa/bb/cc/<sha1>         blobs: read-only, always hashing to their name
    ├── linked_files/sha1/aa/bb/cc/<sha1>   JSON records of files linked in place (link_file)
    ├── hash_memo/<kk>/<key>         JSON: SHA-1 of a local file version, so it is not read twice
    ├── mutables/@folder/.../<name>  local mutable values
    └── tmp/locks/<sha1>.lock        locks that keep two processes from writing one large blob twice

Temp files are ``.<name>.<16 hex>.part``: those of blobs at the root of ``sha1/``, the others beside their
final path. A writer holds a lock on its temp file until it is in place; each process removes the unlocked
ones (of killed writers) from a directory the first time it writes there. Nothing here needs a lock for
correctness; in multiuser mode everything is created group-shared (see :mod:`.fs`).
"""

from __future__ import annotations

from pathlib import Path

from .blobs import BlobStore
from .fs import Permissions
from .hash_memo import HashMemo
from .linked_files import LinkedFiles
from .mutables import LocalMutables


class LocalDirectory:
    """Everything kept in one client directory, with one permission policy."""

    def __init__(self, root: Path, *, multiuser: bool = False) -> None:
        self.root = root
        self.perms = Permissions(multiuser, root)
        self.hash_memo = HashMemo(root / "hash_memo", self.perms)
        self.blobs = BlobStore(root / "sha1", root / "tmp" / "locks", self.perms, self.hash_memo)
        self.linked_files = LinkedFiles(root / "linked_files" / "sha1", self.perms)
        self.mutables = LocalMutables(root / "mutables", self.perms)


__all__ = ["LocalDirectory"]
