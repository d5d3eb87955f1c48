"""Layer 3: a client directory shared by several Unix users (multiuser mode), reached without ever following a
symbolic link inside it, and with a record of whom each step can be trusted to.

Members of a lab are not all trusted. In a shared directory one member can create entries that another's
process later uses, so every path below the root is walked one component at a time with ``O_NOFOLLOW``
(``openat`` on the directory reached so far): a symlink that a member planted at ``sha1/aa`` or
``mutables/@folder`` is refused (:class:`~kachery_cloud.errors.LocalFileError`), never followed into someone's
home. The root itself is the path the user configured and is opened as given.

Trust. Directories made by ``kachery-cloud multiuser init`` have the sticky bit: in them, only an entry's owner
(or the directory's) may rename or remove it. So a file is known to be what its owner put there if it and every
directory above it up to the root are owned by the reader, the root's owner (the lab's administrator) or root,
and every such directory is sticky or writable by its owner alone. :attr:`Opened.own` is that, for a regular,
read-only, singly linked file of the reader's own: then nobody else can have changed or moved it, and its
content can be taken as is. Anything else (a colleague's file, or any file under a directory a colleague made,
who may move files within it) is checked by its reader before use.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import LocalFileError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
# Mutables are shared values: every member may set or delete any of them, so their directories are not sticky.
_NOT_STICKY = frozenset({"mutables"})


@dataclass(frozen=True)
class Opened:
    """A file opened inside the tree: its descriptor (the caller closes it), its stat, and whether it is the
    reader's own file under a chain of directories nobody else can change (see the module docstring)."""

    fd: int
    st: os.stat_result
    own: bool


class SharedTree:
    """Everything under ``root``, walked without following symlinks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uid = os.geteuid()
        st = os.stat(root)  # the configured path may itself be (or pass through) a symlink: that is the user's
        self.admin_uid = st.st_uid
        self.trusted_uids = frozenset({self.uid, st.st_uid, 0})

    # ------------------------------------------------------------------------------------------ directories

    @contextlib.contextmanager
    def directory(self, path: Path, *, create: bool = False) -> Iterator[tuple[int, bool]]:
        """An fd of the directory ``path`` (inside the root), made with its parents if ``create``; and whether the
        whole chain down to it is trusted."""
        parts = self._parts(path)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        trusted = True
        try:
            for depth, name in enumerate(parts):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    child = self._make_dir(fd, name, sticky=parts[0] not in _NOT_STICKY)
                except PermissionError:
                    where = self.root.joinpath(*parts[: depth + 1])
                    raise LocalFileError(
                        f"{where} belongs to {self._owner_of(name, fd)}, who did not open it to the group: nothing "
                        "under it can be used. Ask the directory's owner to fix its permissions (chmod 3770)"
                    ) from None
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _not_followed(self.root.joinpath(*parts[: depth + 1])) from None
                    raise
                os.close(fd)
                fd = child
                trusted = trusted and self._trusted_dir(os.fstat(fd))
            yield fd, trusted
        finally:
            os.close(fd)

    def _make_dir(self, parent_fd: int, name: str, *, sticky: bool) -> int:
        """Make ``name`` under ``parent_fd``: built under a temporary name and renamed into place, so that no
        other member ever sees it before its permissions are right (group-shared, setgid, sticky)."""
        staging = f".{name[:100]}.{secrets.token_hex(8)}.part"
        os.mkdir(staging, 0o700, dir_fd=parent_fd)
        try:
            fd = os.open(staging, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                group = os.fstat(parent_fd).st_gid
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, -1, group)
                os.fchmod(fd, 0o770 | stat.S_ISGID | (stat.S_ISVTX if sticky else 0))
                os.rename(staging, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                return fd
            except BaseException:
                os.close(fd)
                raise
        except OSError as e:
            with contextlib.suppress(OSError):
                os.rmdir(staging, dir_fd=parent_fd)
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        # Another process made it first: use theirs.
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)

    def _trusted_dir(self, st: os.stat_result) -> bool:
        only_owner_may_move = bool(st.st_mode & stat.S_ISVTX) or not st.st_mode & 0o022
        return st.st_uid in self.trusted_uids and only_owner_may_move

    # ------------------------------------------------------------------------------------------ files

    def open(self, path: Path) -> Opened | None:
        """Open the regular file ``path`` for reading; None if it does not exist. A symlink (or anything but a
        regular file) there is refused."""
        try:
            with self.directory(path.parent) as (dir_fd, trusted):
                try:
                    fd = os.open(path.name, _FILE_FLAGS, dir_fd=dir_fd)
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        raise _not_followed(path) from None
                    raise
        except FileNotFoundError:
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise LocalFileError(f"{path} is not a regular file; remove it or ask the directory's owner to")
        own = trusted and st.st_uid == self.uid and st.st_nlink == 1 and not st.st_mode & 0o222
        return Opened(fd, st, own)

    def read(self, path: Path) -> tuple[bytes, os.stat_result] | None:
        """The bytes of the regular file ``path`` and its stat (None if it does not exist)."""
        opened = self.open(path)
        if opened is None:
            return None
        with os.fdopen(opened.fd, "rb") as f:
            return f.read(), opened.st

    def _owner_of(self, name: str, dir_fd: int) -> str:
        try:
            return self.owner_name(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
        except OSError:
            return "another user"

    def owner_name(self, st: os.stat_result) -> str:
        import pwd

        try:
            return pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            return f"uid {st.st_uid}"

    def _parts(self, path: Path) -> tuple[str, ...]:
        try:
            return path.relative_to(self.root).parts
        except ValueError:
            raise LocalFileError(f"{path} is outside the client directory {self.root}") from None


def _not_followed(path: Path) -> LocalFileError:
    return LocalFileError(
        f"{path} is a symbolic link (or not a directory) inside a shared kachery-cloud directory: links there are "
        "never followed, since another member could make one lead anywhere. Ask the directory's owner to remove it"
    )
