"""Layer 3: how the client directory is written: permissions, atomic writes, leftovers of killed writers.

Atomic writes: content goes to ``.<name>.<random>.part`` in the target's own directory and is renamed into
place once complete (after fsync when the caller asks for durability), so a reader sees the old file, the
new file, or nothing; never a partial one. A writer holds a ``flock`` on its temp file until the rename.
The kernel drops that lock when the process dies, even by ``kill -9``, which is how
:func:`remove_stale_temp_files` tells a dead writer's leftover from a live writer's work in progress.

Multiuser mode (a lab sharing one directory): whatever each user's umask, new directories are group-shared
with setgid (so everything below inherits the group) and, but for mutables, sticky (so that only its owner may
rename or remove an entry); new files get the owner's read/write bits mirrored to the group. Blobs stay
read-only for everyone. Every path below the root is reached through :class:`~.tree.SharedTree`, which never
follows a symlink there. Writes go through directory descriptors (``openat``, ``renameat``), so a link planted
meanwhile cannot redirect them either.
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

from ..errors import LocalFileError
from .tree import SharedTree

TEMP_SUFFIX = ".part"
# Exactly the names temp_path_in makes, so that a sweep never touches a user's own ".something.part".
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + r"\Z", re.DOTALL)
_LOCKS_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF, errno.EINVAL)
# Where locks are unsupported (some network filesystems), only age tells a leftover apart.
_UNLOCKABLE_TEMP_MAX_AGE_SECONDS = 24 * 3600.0


class Permissions:
    """Creates directories and finishes new files, private to the user or shared with the group; in a shared
    directory (``multiuser`` with a ``root``), every path is reached through a :class:`SharedTree`."""

    def __init__(self, multiuser: bool, root: Path | None = None) -> None:
        self.multiuser = multiuser
        self.tree = SharedTree(root) if multiuser and root is not None and root.is_dir() else None
        self._root = root

    def make_dirs(self, path: Path) -> None:
        """Create ``path`` and any missing parents; in multiuser mode each one group-shared with setgid."""
        with self.directory(path, create=True):
            pass

    @contextlib.contextmanager
    def directory(self, path: Path, *, create: bool = False) -> Iterator[tuple[int, bool]]:
        """An fd of the directory ``path`` (made first if ``create``) and whether nobody but the user, the
        directory's administrator or root can change what is in it (always True outside a shared directory)."""
        if self.tree is None and self.multiuser and self._root is not None and create:
            self._root.mkdir(parents=True, exist_ok=True)  # the root of a new shared directory, then the tree
            self.tree = SharedTree(self._root)
        if self.tree is not None:
            with self.tree.directory(path, create=create) as found:
                yield found
            return
        if create and not path.is_dir():
            if self.multiuser:
                self._make_shared_dirs(path)
            else:
                os.makedirs(path, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd, True
        finally:
            os.close(fd)

    def _make_shared_dirs(self, path: Path) -> None:
        if path.is_dir():
            return
        self._make_shared_dirs(path.parent)
        # Build the directory under a temporary name and rename it into place, so that no other user ever
        # sees it before its permissions are right (a plain mkdir would be private until the chmod).
        staging = path.parent / f".{short_stem(path.name)}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        os.mkdir(staging)
        try:
            st = staging.stat()
            group = path.parent.stat().st_gid
            if st.st_gid != group:
                with contextlib.suppress(PermissionError):
                    os.chown(staging, -1, group)
            mode = stat.S_IMODE(st.st_mode)
            os.chmod(staging, mode | ((mode & 0o700) >> 3) | stat.S_ISGID)
            os.rename(staging, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.rmdir(staging)
            if not (e.errno in (errno.EEXIST, errno.ENOTEMPTY) and path.is_dir()):
                raise

    def finish_new_file(self, fd: int, dir_fd: int) -> None:
        """Give a file this process just created (in the directory ``dir_fd``) the group permissions multiuser
        mode requires."""
        if not self.multiuser:
            return
        st = os.fstat(fd)
        group = os.fstat(dir_fd).st_gid
        if st.st_gid != group:
            with contextlib.suppress(PermissionError):
                os.fchown(fd, -1, group)
        mode = stat.S_IMODE(st.st_mode)
        os.fchmod(fd, mode | ((mode & 0o600) >> 3))


def temp_path_in(directory: Path, stem: str) -> Path:
    """A unique temporary name in ``directory``."""
    return directory / f".{short_stem(stem)}.{secrets.token_hex(8)}{TEMP_SUFFIX}"


def short_stem(name: str) -> str:
    """At most 100 bytes of ``name`` (whole characters): a temp name is longer than the name it stands for,
    and must still fit the filesystem's 255-byte limit."""
    return name.encode("utf-8")[:100].decode("utf-8", "ignore")


def create_locked_temp(directory: Path, stem: str, mode: int, *, dir_fd: int | None = None) -> tuple[Path, int]:
    """A new temp file (path, fd) in ``directory`` (reached through ``dir_fd`` if given), created and then
    locked; the lock lasts until the fd is closed, which must come after the file is renamed or linked into
    place. Between creating and locking, a sweeper may see it unlocked and delete it: then the name no longer
    leads to our file, and we start again under a new name."""
    while True:
        path = temp_path_in(directory, stem)
        name: str | Path = path.name if dir_fd is not None else path
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
        try:
            if not _lock_blocking(fd):
                return path, fd  # no locks on this filesystem: sweepers go by age alone
            with contextlib.suppress(FileNotFoundError):
                if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
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

    Leaving the ``with`` block without committing (or through an exception) deletes it. Every step goes
    through the descriptor of its directory, so nothing renamed or linked meanwhile can redirect it.
    """

    def __init__(self, directory: Path, perms: Permissions, *, stem: str, read_only: bool = False) -> None:
        self.perms = perms
        self.directory = directory
        self._done = False
        self._stack = contextlib.ExitStack()
        try:
            self._dir_fd, _ = self._stack.enter_context(perms.directory(directory, create=True))
            self.path, self._fd = create_locked_temp(
                directory, stem, 0o444 if read_only else 0o666, dir_fd=self._dir_fd
            )
        except BaseException:
            self._stack.close()
            raise
        try:
            perms.finish_new_file(self._fd, self._dir_fd)
            self.file: BinaryIO = _WritebackFile(self._fd)  # type: ignore[assignment]
        except BaseException:
            self.discard()
            raise

    def commit(self, target: Path, *, durable: bool = True, overwrite: bool = True) -> None:
        """Move the content to ``target`` (same filesystem); fsync first if ``durable``.

        With ``overwrite=False`` an existing ``target`` is kept and this content dropped (for content-addressed
        files, where both are identical; in a shared directory the one there may be another member's, which
        its readers check).
        """
        self.file.flush()
        if durable:
            self.file.wait_for_writeback()  # type: ignore[attr-defined]
            os.fsync(self._fd)
        with contextlib.ExitStack() as stack:
            target_fd = self._dir_fd
            if target.parent != self.directory:
                target_fd, _ = stack.enter_context(self.perms.directory(target.parent, create=True))
            if not overwrite and _exists(target.name, target_fd):
                self.discard()
                return
            try:
                os.replace(self.path.name, target.name, src_dir_fd=self._dir_fd, dst_dir_fd=target_fd)
            except PermissionError:
                # A sticky shared directory: the file there belongs to another member, who alone may replace it.
                if overwrite:
                    self.discard()
                    raise LocalFileError(
                        f"cannot replace {target}: in a shared directory only the member who wrote it (or the "
                        "directory's owner) may"
                    ) from None
                self.discard()
                return
        self._close()

    def discard(self) -> None:
        if self._done:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path.name, dir_fd=self._dir_fd)
        self._close()

    def _close(self) -> None:
        self._done = True
        if hasattr(self, "file"):
            self.file.wait_for_writeback()  # type: ignore[attr-defined]
            self.file.close()
        os.close(self._fd)  # releases the lock, after the rename
        self._stack.close()

    def __enter__(self) -> TempFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


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
    sweep_once(target.parent, perms)
    with TempFile(target.parent, perms, stem=target.name, read_only=read_only) as temp:
        yield temp.file
        temp.commit(target, durable=durable, overwrite=overwrite)


# Directories this process has swept already: listing a directory on every write would cost more than
# writing a small file, and a leftover only needs removing once.
_swept: set[Path] = set()


def sweep_once(directory: Path, perms: Permissions, *, with_subdirectories: bool = False) -> None:
    """Remove the leftovers of dead writers in ``directory`` (and its direct subdirectories), the first time
    this process writes there."""
    if directory in _swept:
        return
    subdirectories = remove_stale_temp_files(directory, perms)
    if with_subdirectories:
        for name in subdirectories:
            sweep_once(directory / name, perms)
    _swept.add(directory)


def remove_stale_temp_files(directory: Path, perms: Permissions) -> list[str]:
    """Delete temp files in ``directory`` whose writer has died (in a shared directory, those of this user:
    only a file's owner may remove it there). Returns the names of the subdirectories seen."""
    subdirectories: list[str] = []
    try:
        with perms.directory(directory) as (dir_fd, _trusted), os.scandir(dir_fd) as entries:
            for entry in entries:
                if _TEMP_NAME.match(entry.name):
                    _remove_if_abandoned(entry.name, dir_fd)
                elif entry.is_dir(follow_symlinks=False):
                    subdirectories.append(entry.name)
    except (OSError, LocalFileError):
        pass
    return subdirectories


def _remove_if_abandoned(name: str, dir_fd: int) -> None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
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
        os.unlink(name, dir_fd=dir_fd)
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
