"""Layer 3: how the client directory is written: permissions, atomic writes, leftovers of killed writers.

Atomic writes: content goes to ``.<name>.<random>.part`` in the target's own directory and is renamed into
place once complete (after fsync when the caller asks for durability), so a reader sees the old file, the
new file, or nothing; never a partial one. A writer holds a ``flock`` on its temp file until the rename.
The kernel drops that lock when the process dies, even by ``kill -9``, which is how
:func:`remove_stale_temp_files` tells a dead writer's leftover from a live writer's work in progress.

Multiuser mode (a lab sharing one directory): whatever each user's umask, new directories get the owner's
permission bits mirrored to the group plus setgid (so everything below inherits the group), and new files
get the owner's read/write bits mirrored to the group. Blobs stay read-only for everyone. What "others"
get is still decided by the umask.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".part"
# Exactly the names temp_path_in makes, so that a sweep never touches a user's own ".something.part".
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + r"\Z", re.DOTALL)
_LOCKS_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF, errno.EINVAL)
# Where locks are unsupported (some network filesystems), only age tells a leftover apart.
_UNLOCKABLE_TEMP_MAX_AGE_SECONDS = 24 * 3600.0


class Permissions:
    """Creates directories and finishes new files, private to the user or shared with the group."""

    def __init__(self, multiuser: bool) -> None:
        self.multiuser = multiuser

    def make_dirs(self, path: Path) -> None:
        """Create ``path`` and any missing parents; in multiuser mode each one group-shared with setgid."""
        if path.is_dir():
            return
        if not self.multiuser:
            os.makedirs(path, exist_ok=True)
            return
        self.make_dirs(path.parent)
        # Build the directory under a temporary name and rename it into place, so that no other user ever
        # sees it before its permissions are right (a plain mkdir would be private until the chmod).
        staging = path.parent / f".{short_stem(path.name)}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        os.mkdir(staging)
        try:
            self._share_dir(staging, path.parent)
            os.rename(staging, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.rmdir(staging)
            if not (e.errno in (errno.EEXIST, errno.ENOTEMPTY) and path.is_dir()):
                raise

    def finish_new_file(self, fd: int, directory: Path) -> None:
        """Give a file this process just created the group permissions multiuser mode requires."""
        if not self.multiuser:
            return
        st = os.fstat(fd)
        group = directory.stat().st_gid
        if st.st_gid != group:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, -1, group)
        mode = stat.S_IMODE(st.st_mode)
        os.fchmod(fd, mode | ((mode & 0o600) >> 3))

    def _share_dir(self, path: Path, parent: Path) -> None:
        st = path.stat()
        group = parent.stat().st_gid
        if st.st_gid != group:
            with contextlib.suppress(PermissionError):
                os.chown(path, -1, group)
        mode = stat.S_IMODE(st.st_mode)
        os.chmod(path, mode | ((mode & 0o700) >> 3) | stat.S_ISGID)


def temp_path_in(directory: Path, stem: str) -> Path:
    """A unique temporary name in ``directory``."""
    return directory / f".{short_stem(stem)}.{secrets.token_hex(8)}{TEMP_SUFFIX}"


def short_stem(name: str) -> str:
    """At most 100 bytes of ``name`` (whole characters): a temp name is longer than the name it stands for,
    and must still fit the filesystem's 255-byte limit."""
    return name.encode("utf-8")[:100].decode("utf-8", "ignore")


def create_locked_temp(directory: Path, stem: str, mode: int) -> tuple[Path, int]:
    """A new temp file (path, fd), created and then locked; the lock lasts until the fd is closed, which must
    come after the file is renamed or linked into place. Between creating and locking, a sweeper may see it
    unlocked and delete it: then the name no longer leads to our file, and we start again under a new name."""
    while True:
        path = temp_path_in(directory, stem)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            if not _lock_blocking(fd):
                return path, fd  # no locks on this filesystem: sweepers go by age alone
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return path, fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _lock_blocking(fd: int) -> bool:
    """Take an exclusive flock, waiting out a sweeper's brief shared one; False if locks are unsupported."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    except OSError as e:
        if e.errno in _LOCKS_UNSUPPORTED:
            return False
        raise


class TempFile:
    """A new file under a temporary name, locked while open, that :meth:`commit` renames into place.

    Leaving the ``with`` block without committing (or through an exception) deletes it.
    """

    def __init__(self, directory: Path, perms: Permissions, *, stem: str, read_only: bool = False) -> None:
        perms.make_dirs(directory)
        self.path, self._fd = create_locked_temp(directory, stem, 0o444 if read_only else 0o666)
        self._done = False
        try:
            perms.finish_new_file(self._fd, directory)
            self.file: BinaryIO = _WritebackFile(self._fd)  # type: ignore[assignment]
        except BaseException:
            self.discard()
            raise

    def commit(self, target: Path, *, durable: bool = True, overwrite: bool = True) -> None:
        """Move the content to ``target`` (same filesystem); fsync first if ``durable``.

        With ``overwrite=False`` an existing ``target`` is kept and this content dropped (for content-addressed
        files, where both are identical).
        """
        self.file.flush()
        if durable:
            self.file.wait_for_writeback()  # type: ignore[attr-defined]
            os.fsync(self._fd)
        if not overwrite and target.exists():
            self.discard()
            return
        os.replace(self.path, target)
        self._close()

    def discard(self) -> None:
        if self._done:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._close()

    def _close(self) -> None:
        self._done = True
        if hasattr(self, "file"):
            self.file.wait_for_writeback()  # type: ignore[attr-defined]
            self.file.close()
        os.close(self._fd)  # releases the lock, after the rename

    def __enter__(self) -> TempFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


class _WritebackFile(io.BufferedWriter):
    """A buffered writer on a temp file that, once a big file has grown by :data:`WRITEBACK_BYTES`, has a
    thread flush what is written so far to disk while more arrives: the fsync before the rename then waits
    for the last part only, instead of for the whole file after the download or copy has finished."""

    def __init__(self, fd: int) -> None:
        super().__init__(io.FileIO(fd, "wb", closefd=False))
        self._unsynced = 0
        self._flusher: threading.Thread | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        n = super().write(data)
        self._unsynced += n
        if self._unsynced >= WRITEBACK_BYTES and (self._flusher is None or not self._flusher.is_alive()):
            self._unsynced = 0
            super().flush()
            self._flusher = threading.Thread(target=_fdatasync_quietly, args=(self.fileno(),), daemon=True)
            self._flusher.start()
        return n

    def wait_for_writeback(self) -> None:
        if self._flusher is not None:
            self._flusher.join()


WRITEBACK_BYTES = 64 << 20


def _fdatasync_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):  # the fsync at commit reports errors; this one only starts early
        os.fdatasync(fd)


@contextlib.contextmanager
def atomic_write(
    target: Path,
    perms: Permissions,
    *,
    read_only: bool = False,
    durable: bool = True,
    overwrite: bool = True,
) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``target`` only if the ``with`` block completes.

    ``read_only`` creates the file without write permission (blobs). ``durable`` fsyncs the data before the
    rename so that a power loss cannot leave a short file under the final name. With ``overwrite=False`` an
    existing ``target`` is kept and the new content discarded (content-addressed files are identical).
    """
    sweep_once(target.parent)
    with TempFile(target.parent, perms, stem=target.name, read_only=read_only) as temp:
        yield temp.file
        temp.commit(target, durable=durable, overwrite=overwrite)


# Directories this process has swept already: listing a directory on every write would cost more than
# writing a small file, and a leftover only needs removing once.
_swept: set[Path] = set()


def sweep_once(directory: Path, *, with_subdirectories: bool = False) -> None:
    """Remove the leftovers of dead writers in ``directory`` (and its direct subdirectories), the first time
    this process writes there."""
    if directory in _swept:
        return
    remove_stale_temp_files(directory)
    if with_subdirectories:
        with contextlib.suppress(OSError):
            for entry in os.scandir(directory):
                if entry.is_dir(follow_symlinks=False) and not _TEMP_NAME.match(entry.name):
                    sweep_once(Path(entry.path))
    _swept.add(directory)


def remove_stale_temp_files(directory: Path) -> None:
    """Delete temp files in ``directory`` whose writer has died."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if _TEMP_NAME.match(name):
            _remove_if_abandoned(directory / name)


def _remove_if_abandoned(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return  # gone already, or not ours to read
    try:
        st = os.fstat(fd)
        age = time.time() - st.st_mtime
        if not stat.S_ISREG(st.st_mode):
            return  # a directory being built by Permissions.make_dirs
        locked = _try_lock(fd, shared=True)
        if locked is False:
            return  # a live writer holds it
        if locked is None and age < _UNLOCKABLE_TEMP_MAX_AGE_SECONDS:
            return
        os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _try_lock(fd: int, *, shared: bool) -> bool | None:
    """Non-blocking flock: True if taken, False if someone else holds it, None if locks are unsupported."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _LOCKS_UNSUPPORTED:
            return None
        raise
