"""Layer 7: a client directory for a whole lab (``kachery-cloud multiuser init DIR --group GROUP``).

What it makes, owned by whoever runs it (the lab's administrator) and group-owned by GROUP::

    DIR/                 drwxrws--T  setgid (everything below is GROUP's) and sticky (only an entry's owner
                                     may rename or remove it: members cannot replace each other's files)
    ├── config.yaml      -rw-r-----  multiuser: true, and api_url / project if given; members cannot change it
    ├── private.pem      -rw-r-----  the lab's client key (one identity for the lab), readable by members only
    ├── public.pem       -rw-r-----
    ├── sha1/            drwxrws--T  blobs; each member's own files, which colleagues check before using
    ├── linked_files/sha1/, hash_memo/, tmp/locks/   drwxrws--T
    └── mutables/        drwxrws---  shared values: any member may set or delete any mutable

Run again on an existing lab directory, it repairs what its runner owns (modes, group) and reports what it
cannot (entries other members own; root can repair those too).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .config import CONFIG_FILE_NAME, ClientConfig, write_config_file
from .errors import ConfigError, InvalidArgumentError, LocalFileError

STICKY_DIR_MODE = 0o770 | stat.S_ISGID | stat.S_ISVTX
SHARED_DIR_MODE = 0o770 | stat.S_ISGID  # mutables: members change each other's values
FILE_MODE = 0o640
STICKY_DIRS = ("sha1", "linked_files", "linked_files/sha1", "hash_memo", "tmp", "tmp/locks")
SHARED_DIRS = ("mutables",)


@dataclass
class LabDirectory:
    """What :func:`init_lab_directory` made or found."""

    path: Path
    group: str
    owner: str
    client_id: str
    created: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    not_repaired: list[str] = field(default_factory=list)


def init_lab_directory(
    path: str | os.PathLike[str], group: str, *, api_url: str | None = None, project: str | None = None
) -> LabDirectory:
    """Make (or repair) a client directory that the members of the Unix group ``group`` share safely."""
    root = Path(os.path.abspath(os.path.expanduser(path)))
    try:
        return _init(root, group, api_url=api_url, project=project)
    except OSError as e:  # e.g. chown onto a file system that refuses it: a message, not a traceback
        where = e.filename or root
        raise LocalFileError(f"cannot make the lab directory {root}: {e.strerror or e} ({where})") from None


def _init(root: Path, group: str, *, api_url: str | None, project: str | None) -> LabDirectory:
    from .identity import load_identity

    gid = _group_id(group)
    me = os.geteuid()
    if me != 0 and gid not in os.getgroups() and gid != os.getegid():
        raise InvalidArgumentError(
            f"you are not a member of the group {group}; add yourself (usermod -aG) or run as root"
        )
    lab = LabDirectory(root, group, _user_name(me), client_id="")
    if not root.exists():
        if not root.parent.is_dir():
            raise LocalFileError(f"cannot make {root}: {root.parent} is not a directory")
        os.mkdir(root, 0o700)
        lab.created.append(str(root))
    elif not root.is_dir():
        raise LocalFileError(f"{root} exists and is not a directory")
    _own(lab, root, gid, STICKY_DIR_MODE, me)
    for name, mode in [*((d, STICKY_DIR_MODE) for d in STICKY_DIRS), *((d, SHARED_DIR_MODE) for d in SHARED_DIRS)]:
        directory = root / name
        if directory.is_symlink():
            raise LocalFileError(f"{directory} is a symbolic link; remove it first")
        if not directory.exists():
            os.mkdir(directory, 0o700)
            lab.created.append(str(directory))
        _own(lab, directory, gid, mode, me)
    _write_config(lab, root / CONFIG_FILE_NAME, gid, me, api_url=api_url, project=project)
    config = ClientConfig(dir=root, api_url=api_url, project=project, multiuser=True, ephemeral=False, quiet=True)
    had_key = (root / "private.pem").exists()
    try:
        identity = load_identity(config, create=True)
    except ConfigError as e:  # a key another member made or can change: report it, repair the rest
        lab.not_repaired.append(str(e))
        return lab
    assert identity is not None
    lab.client_id = identity.client_id
    for name in ("private.pem", "public.pem"):
        if not had_key:
            lab.created.append(str(root / name))
        _own(lab, root / name, gid, FILE_MODE, me)
    return lab


def _write_config(
    lab: LabDirectory, path: Path, gid: int, me: int, *, api_url: str | None, project: str | None
) -> None:
    import yaml

    values: dict[str, object] = {}
    if path.is_symlink():
        raise LocalFileError(f"{path} is a symbolic link; remove it first")
    if path.exists():
        if path.stat().st_uid not in (me, 0) and me != 0:
            lab.not_repaired.append(f"{path} belongs to {_user_name(path.stat().st_uid)}: remove it and run again")
            return
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise LocalFileError(f"{path} is not a mapping of settings; fix or remove it")
    else:
        lab.created.append(str(path))
    values["multiuser"] = True
    if api_url:
        values["api_url"] = api_url
    if project:
        values["project"] = project
    write_config_file(path, values, group=gid, mode=FILE_MODE)


def _own(lab: LabDirectory, path: Path, gid: int, mode: int, me: int) -> None:
    """Give ``path`` the group and mode of the layout (and, as root, the owner root's); report what is not ours."""
    st = path.lstat()
    if st.st_uid != me and me != 0:
        if st.st_gid != gid or stat.S_IMODE(st.st_mode) != mode:
            lab.not_repaired.append(f"{path} belongs to {_user_name(st.st_uid)}; only they or root can fix it")
        return
    if (st.st_gid, stat.S_IMODE(st.st_mode)) == (gid, mode):
        return
    os.chown(path, -1, gid, follow_symlinks=False)
    os.chmod(path, mode)
    if str(path) not in lab.created:
        lab.repaired.append(str(path))


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise InvalidArgumentError(
            f"there is no Unix group named {group!r}; create it first (groupadd {group})"
        ) from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
