"""Real Unix users for the multiuser tests, and a Python runtime those users can execute.

The test process may run from an interpreter and site-packages other users cannot read (here, under a
0700 /root). The users get the same interpreter if they can execute it, else the system's python of the
same minor version; and copies of kachery_cloud and its dependencies in a world-readable directory.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import distribution
from pathlib import Path

from filelock import FileLock

import kachery_cloud

GROUP = "kctestlab"
USERS = ("kctestalice", "kctestbob")
DEPENDENCIES = ("click", "filelock", "numpy", "PyYAML", "tqdm")
# What a client that talks to a server needs besides.
NETWORK_DEPENDENCIES = (
    *("requests", "urllib3", "idna", "charset-normalizer", "certifi", "cryptography", "cffi", "tenacity"),
)


@dataclass(frozen=True)
class LabUser:
    name: str
    uid: int
    gid: int
    lab_gid: int


def ensure_lab_users() -> list[LabUser]:
    """Create the lab group and two users with private primary groups (idempotent; test workers running at once
    take turns, or both would add the same user)."""
    with FileLock("/run/lock/kachery-cloud-test-users.lock"):
        return _ensure_lab_users()


def _ensure_lab_users() -> list[LabUser]:
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", GROUP], check=True)
    lab_gid = grp.getgrnam(GROUP).gr_gid
    users = []
    for name in USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(
                ["useradd", "--no-create-home", "--user-group", "--groups", GROUP, "--shell", "/bin/sh", name],
                check=True,
            )
        entry = pwd.getpwnam(name)
        users.append(LabUser(name, entry.pw_uid, entry.pw_gid, lab_gid))
    return users


def build_runtime(root: Path, user: LabUser, *, network: bool = False) -> tuple[str, dict[str, str]]:
    """An interpreter path and environment under which ``user`` can import kachery_cloud (and, with ``network``,
    talk to a server)."""
    site = root / "site"
    site.mkdir(parents=True)
    shutil.copytree(Path(kachery_cloud.__file__).parent, site / "kachery_cloud")
    for name in DEPENDENCIES + (NETWORK_DEPENDENCIES if network else ()):
        _copy_distribution(name, site)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    for interpreter in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        probe = run_as(user, interpreter, "import kachery_cloud, numpy, yaml, filelock, click", env)
        if probe.returncode == 0:
            return interpreter, env
    raise RuntimeError(f"no interpreter that {user.name} can run kachery_cloud with: {probe.stderr}")


def run_as(
    user: LabUser, interpreter: str, code: str, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as ``user`` with umask 077, the lab group as a supplementary group."""
    try:
        return subprocess.run(
            [interpreter, "-c", code, *args],
            user=user.uid, group=user.gid, extra_groups=[user.lab_gid], umask=0o077,
            env={**env, "HOME": "/nonexistent"}, capture_output=True, text=True, timeout=120, cwd="/",
        )  # fmt: skip
    except PermissionError as e:  # the interpreter itself is not executable by the user
        return subprocess.CompletedProcess([interpreter], 126, "", str(e))


def _copy_distribution(name: str, site: Path) -> None:
    dist = distribution(name)
    tops = {f.parts[0] for f in dist.files or [] if not f.parts[0].startswith("..")}
    base = Path(str(dist.locate_file("")))
    for top in tops:
        source = base / top
        if top.endswith(".dist-info") or top == "__pycache__" or not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, site / top, ignore=shutil.ignore_patterns("__pycache__", "tests"))
        else:
            shutil.copy2(source, site / top)


def is_root() -> bool:
    return os.geteuid() == 0
