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
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

from ..errors import IntegrityError
from ..protocol.hashing import HashingWriter, ProgressCallback
from .fs import Permissions, TempFile, sweep_once

# Below this size writing twice costs less than taking a lock.
LOCK_MIN_BYTES = 8 << 20
# A lock is only an optimization: after this long, write anyway.
LOCK_TIMEOUT_SECONDS = 600.0

Writer = Callable[[BinaryIO], None]


class BlobStore:
    """Blobs under ``directory`` (``<KACHERY_CLOUD_DIR>/sha1``); locks under ``lock_directory``."""

    def __init__(self, directory: Path, lock_directory: Path, perms: Permissions) -> None:
        self.directory = directory
        self.lock_directory = lock_directory
        self.perms = perms

    def path(self, sha1: str) -> Path:
        """Where the blob with hash ``sha1`` lives (whether or not it exists)."""
        return self.directory / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1

    def find(self, sha1: str) -> Path | None:
        """The blob's path if it is stored here."""
        path = self.path(sha1)
        return path if path.is_file() else None

    def put(self, sha1: str, write: Writer, *, size_hint: int = 0, on_progress: ProgressCallback | None = None) -> Path:
        """Store the bytes that ``write(stream)`` produces under ``sha1`` unless they are stored already.

        Raises :class:`IntegrityError` (and stores nothing) if the bytes do not hash to ``sha1``.
        """
        target = self.path(sha1)
        if target.is_file():
            return target
        with self._lock(sha1, size_hint):
            if target.is_file():  # written by whoever held the lock before us
                return target
            sweep_once(self.directory)
            with TempFile(self.directory, self.perms, stem=sha1, read_only=True) as temp:
                hashing = HashingWriter(temp.file, on_progress)
                write(hashing)  # type: ignore[arg-type]
                actual = hashing.hexdigest()
                if actual != sha1:
                    raise IntegrityError(f"content was expected to have SHA-1 {sha1} but has {actual}")
                self.perms.make_dirs(target.parent)
                temp.commit(target, durable=True, overwrite=False)
        return target

    def add(self, write: Writer, *, on_progress: ProgressCallback | None = None) -> str:
        """Store the bytes that ``write(stream)`` produces, reading them once; return their SHA-1."""
        sweep_once(self.directory)
        with TempFile(self.directory, self.perms, stem="incoming", read_only=True) as temp:
            hashing = HashingWriter(temp.file, on_progress)
            write(hashing)  # type: ignore[arg-type]
            sha1 = hashing.hexdigest()
            target = self.path(sha1)
            if target.is_file():
                return sha1  # already stored: the temp file is discarded
            self.perms.make_dirs(target.parent)
            temp.commit(target, durable=True, overwrite=False)
        return sha1

    @contextlib.contextmanager
    def lock(self, sha1: str) -> Iterator[None]:
        """Keep other processes from fetching or writing ``sha1`` meanwhile (best effort: on timeout or
        when locks cannot be taken, the block runs anyway; correctness never depends on it)."""
        self.perms.make_dirs(self.lock_directory)
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
