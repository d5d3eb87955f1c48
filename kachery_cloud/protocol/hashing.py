"""Layer 2: SHA-1 of bytes, files and streams. Pure apart from reading the file it is asked to hash."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import BinaryIO

# 1 MiB reads: large enough to amortize system calls, small enough for smooth progress reports.
CHUNK_SIZE = 1 << 20

ProgressCallback = Callable[[int], None]


def sha1_of_bytes(data: bytes | bytearray | memoryview) -> str:
    """Lowercase hex SHA-1 of ``data``."""
    return hashlib.sha1(data).hexdigest()


def sha1_of_file(path: str | os.PathLike[str], on_progress: ProgressCallback | None = None) -> str:
    """Lowercase hex SHA-1 of the file at ``path``, read in chunks; ``on_progress(n)`` after each chunk."""
    with open(path, "rb") as f:
        return sha1_of_stream(f, on_progress)


def sha1_of_stream(stream: BinaryIO, on_progress: ProgressCallback | None = None) -> str:
    """Lowercase hex SHA-1 of everything left in ``stream``."""
    digest = hashlib.sha1()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    while True:
        n = stream.readinto(view)  # type: ignore[attr-defined]
        if not n:
            break
        digest.update(view[:n])
        if on_progress is not None:
            on_progress(n)
    return digest.hexdigest()


class HashingWriter:
    """A write-only binary stream that hashes what passes through it on its way to ``target``."""

    def __init__(self, target: BinaryIO, on_progress: ProgressCallback | None = None) -> None:
        self._target = target
        self._digest = hashlib.sha1()
        self._on_progress = on_progress

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._digest.update(data)
        self._target.write(data)
        n = memoryview(data).nbytes
        if self._on_progress is not None:
            self._on_progress(n)
        return n

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._target.flush()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()
