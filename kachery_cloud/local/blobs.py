"""Layer 3: content-addressed blobs at ``sha1/aa/bb/cc/<sha1>``.

Invariant: a file at ``path(h)`` always has SHA-1 ``h``, because every byte is hashed on its way into a
temp file and the temp file is renamed to the name its hash gives, never any other:

- :meth:`BlobStore.put` stores content whose hash is known in advance (a download, bytes in memory); a hash
  mismatch stores nothing.
- :meth:`BlobStore.add` stores a stream whose hash is not known yet (a file, a serialized array), in one
  pass.

Temp files of both sit at the root of the blob tree, on the same filesystem as every final path, so that
the leftovers of killed writers are all in one directory, which each process sweeps on its first write.

Correctness never depends on a lock; the per-blob file lock only stops two processes from writing the same
large blob at the same time.

In a shared directory (multiuser mode) a blob file may have been written by another member, who can still
change it (its owner), or be under a directory another member made (who may move files within it). So a cache
hit is taken as it is only for the reader's own file under a chain of directories nobody else can change
(:class:`~.tree.Opened`); any other is checked before it is used: by the reader's own hash-memo entry for that
very version of the file (device, inode, size, mtime and ctime), else by hashing it. A file that fails the check
is reported (:class:`IntegrityError`, naming its owner), never returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from filelock import FileLock, Timeout

from ..errors import IntegrityError
from ..protocol.hashing import HashingWriter, ProgressCallback
from .fs import Permissions, TempFile, sweep_once

if TYPE_CHECKING:
    from .hash_memo import HashMemo
    from .tree import Opened

# Below this size writing twice costs less than taking a lock.
LOCK_MIN_BYTES = 8 << 20
# A lock is only an optimization: after this long, write anyway.
LOCK_TIMEOUT_SECONDS = 600.0
# A checked version of another member's file is remembered only if it last changed this long ago: a change
# within the same tick of the clock as the one before would not show in its ctime.
SETTLED_SECONDS = 2.0

Writer = Callable[[BinaryIO], None]


class BlobStore:
    """Blobs under ``directory`` (``<KACHERY_CLOUD_DIR>/sha1``); locks under ``lock_directory``."""

    def __init__(self, directory: Path, lock_directory: Path, perms: Permissions, memo: HashMemo | None = None) -> None:
        self.directory = directory
        self.lock_directory = lock_directory
        self.perms = perms
        self.memo = memo

    def path(self, sha1: str) -> Path:
        """Where the blob with hash ``sha1`` lives (whether or not it exists)."""
        # One Path made from a string, not four joins: this runs on every cache hit.
        return Path(f"{self.directory}/{sha1[0:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}")

    def find(self, sha1: str) -> Path | None:
        """The blob's path if it is stored here (in a shared directory: checked unless it is the reader's own,
        :class:`IntegrityError` if it does not have its hash)."""
        path = self.path(sha1)
        tree = self.perms.tree
        if tree is None:
            return path if path.is_file() else None
        opened = tree.open(path)
        if opened is None:
            return None
        try:
            if not opened.own:
                self._check(sha1, path, opened)
        finally:
            os.close(opened.fd)
        return path

    def _check(self, sha1: str, path: Path, opened: Opened) -> None:
        """That another member's file (or one they could have moved) has SHA-1 ``sha1``, now."""
        from .hash_memo import FileFingerprint

        before = FileFingerprint.of(opened.st)
        if self.memo is not None and self.memo.get(before) == sha1:
            return
        digest = hashlib.sha1()
        offset = 0
        while chunk := os.pread(opened.fd, 1 << 20, offset):
            digest.update(chunk)
            offset += len(chunk)
        assert self.perms.tree is not None
        if digest.hexdigest() != sha1:
            owner = self.perms.tree.owner_name(opened.st)
            raise IntegrityError(
                f"{path} in this shared directory does not have the SHA-1 it is named by: it was changed or "
                f"replaced after it was stored (it belongs to {owner}). Nothing was read from it; ask the "
                f"directory's owner to remove it (rm {path}) so that it is fetched again"
            )
        after = FileFingerprint.of(os.fstat(opened.fd))
        if self.memo is not None and after == before and time.time() - opened.st.st_ctime > SETTLED_SECONDS:
            self.memo.put(before, sha1, path)

    def put(self, sha1: str, write: Writer, *, size_hint: int = 0, on_progress: ProgressCallback | None = None) -> Path:
        """Store the bytes that ``write(stream)`` produces under ``sha1`` unless they are stored already.

        Raises :class:`IntegrityError` (and stores nothing) if the bytes do not hash to ``sha1``.
        """
        target = self.path(sha1)
        if self.find(sha1) is not None:
            return target
        with self._lock(sha1, size_hint):
            if self.find(sha1) is not None:  # written by whoever held the lock before us
                return target
            sweep_once(self.directory, self.perms)
            with TempFile(self.directory, self.perms, stem=sha1, read_only=True) as temp:
                hashing = HashingWriter(temp.file, on_progress)
                write(hashing)  # type: ignore[arg-type]
                actual = hashing.hexdigest()
                if actual != sha1:
                    raise IntegrityError(f"content was expected to have SHA-1 {sha1} but has {actual}")
                temp.commit(target, durable=True, overwrite=False)
        return target

    def add(self, write: Writer, *, on_progress: ProgressCallback | None = None) -> str:
        """Store the bytes that ``write(stream)`` produces, reading them once; return their SHA-1."""
        sweep_once(self.directory, self.perms)
        with TempFile(self.directory, self.perms, stem="incoming", read_only=True) as temp:
            hashing = HashingWriter(temp.file, on_progress)
            write(hashing)  # type: ignore[arg-type]
            sha1 = hashing.hexdigest()
            # Already stored: kept, and the temp file discarded (in a shared directory, readers check a copy
            # that is not theirs).
            temp.commit(self.path(sha1), durable=True, overwrite=False)
        return sha1

    @contextlib.contextmanager
    def lock(self, sha1: str) -> Iterator[None]:
        """Keep other processes from fetching or writing ``sha1`` meanwhile (best effort: on timeout or
        when locks cannot be taken, the block runs anyway; correctness never depends on it)."""
        with self.perms.directory(self.lock_directory, create=True) as (_fd, trusted):
            pass
        if not trusted:  # a directory another member made, and could swap for a link: go without the lock
            yield
            return
        # filelock opens the lock file itself with O_NOFOLLOW.
        lock = FileLock(self.lock_directory / f"{sha1}.lock", mode=0o660 if self.perms.multiuser else 0o600)
        try:
            lock.acquire(timeout=LOCK_TIMEOUT_SECONDS)
        except (Timeout, OSError):
            yield
            return
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def _lock(self, sha1: str, size_hint: int) -> Iterator[None]:
        if size_hint < LOCK_MIN_BYTES:
            yield
            return
        with self.lock(sha1):
            yield


def copy_file_into(source: Path) -> Writer:
    """A writer (for :meth:`BlobStore.put`, :meth:`BlobStore.add` or any stream) copying ``source`` in 1 MiB chunks."""

    def write(out: BinaryIO) -> None:
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        with open(source, "rb") as f:
            while n := f.readinto(view):
                out.write(view[:n])

    return write
