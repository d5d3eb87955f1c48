"""How the server's owner proves, from this machine, that they are the Unix user who runs the server: a random
token in a file of the data directory that only that user (and root) can read. ``kachery-cloud-init`` on this
machine reads it and sends a proof made from it (:mod:`kachery_cloud.protocol.owner_proof`, never the token);
any other local user cannot, and gets told to ask for an invitation instead. (A loopback address proves
nothing: every user of the machine, and a reverse proxy, has one.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

TOKEN_FILE = "owner-token"


def ensure_owner_token(data_dir: Path) -> tuple[str, Path]:
    """The owner token of ``data_dir`` and its file, made on first use (and again if the file was tampered with:
    not a plain file of this user's, readable by others, or not a token)."""
    path = data_dir / TOKEN_FILE
    token = _read_own_token(path)
    if token is not None:
        return token, path
    token = secrets.token_urlsafe(32)
    temp = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return token, path


def _read_own_token(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
            return None
        token = f.read(200).strip()
    return token if len(token) >= 40 else None
