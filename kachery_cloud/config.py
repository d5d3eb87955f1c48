"""Layer 1: where the client keeps its data and how it is configured. The only module that reads the
environment or ``config.yaml``.

Everything is read at call time, never at import, so tests and long-running notebooks can change the
environment and see the change. Precedence: environment variable, then ``$KACHERY_CLOUD_DIR/config.yaml``,
then the default.

| variable                  | config.yaml key | default                                  |
|---------------------------|-----------------|------------------------------------------|
| KACHERY_CLOUD_DIR         | (the directory) | ~/.kachery-cloud                         |
| KACHERY_CLOUD_API_URL     | api_url         | http://127.0.0.1:7733                    |
| KACHERY_CLOUD_PROJECT     | project         | the client's default project (server)    |
| KACHERY_CLOUD_MULTIUSER   | multiuser       | false                                    |
| KACHERY_CLOUD_EPHEMERAL   | -               | false                                    |
| KACHERY_CLOUD_QUIET       | -               | false                                    |
| KACHERY_CLOUD_CLIENT_ID   | -               | derived from $KACHERY_CLOUD_DIR/private.pem |
| KACHERY_CLOUD_PRIVATE_KEY | -               | $KACHERY_CLOUD_DIR/private.pem           |

``api_url`` stays ``None`` when unset so callers can tell "configured" from "default";
:attr:`ClientConfig.effective_api_url` applies the default.

A directory that other users may write to (not owned by this user, or group- or world-writable) is shared, and
multiuser mode applies to it whatever the settings say. Its ``config.yaml`` is then read only if it is a regular
file (not a symlink) of this user's, the directory owner's or root's that nobody else may write: a member who
could swap it could point a colleague at another server.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_DIR = "KACHERY_CLOUD_DIR"
ENV_API_URL = "KACHERY_CLOUD_API_URL"
ENV_PROJECT = "KACHERY_CLOUD_PROJECT"
ENV_MULTIUSER = "KACHERY_CLOUD_MULTIUSER"
ENV_EPHEMERAL = "KACHERY_CLOUD_EPHEMERAL"
ENV_QUIET = "KACHERY_CLOUD_QUIET"
ENV_CLIENT_ID = "KACHERY_CLOUD_CLIENT_ID"
ENV_PRIVATE_KEY = "KACHERY_CLOUD_PRIVATE_KEY"
ENV_RETRY_SEC = "KACHERY_CLOUD_RETRY_SEC"

CONFIG_FILE_NAME = "config.yaml"
DEFAULT_DIR = "~/.kachery-cloud"
# How long an API server that cannot be reached is retried: long enough to ride out its restart.
DEFAULT_RETRY_SEC = 20.0
# Where ``kachery-cloud-server start`` listens by default.
DEFAULT_API_URL = "http://127.0.0.1:7733"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class ClientConfig:
    """The effective configuration of this process, environment applied."""

    dir: Path
    api_url: str | None
    project: str | None
    multiuser: bool
    ephemeral: bool
    quiet: bool
    # An identity given by the environment (CI machines) instead of the key files in ``dir``.
    env_client_id: str | None = None
    env_private_key: str | None = field(default=None, repr=False)
    # Seconds to keep retrying an API server that cannot be reached (CI may want to fail fast).
    retry_sec: float = DEFAULT_RETRY_SEC

    @property
    def effective_api_url(self) -> str:
        """The API server to talk to: the configured one, else the embedded server's default address."""
        return (self.api_url or DEFAULT_API_URL).rstrip("/")


def kachery_cloud_dir() -> Path:
    """The client directory: ``$KACHERY_CLOUD_DIR`` or ``~/.kachery-cloud``, as an absolute path."""
    raw = os.environ.get(ENV_DIR) or DEFAULT_DIR
    return Path(os.path.abspath(os.path.expanduser(raw)))


def load_config() -> ClientConfig:
    """Read the configuration now (environment over ``config.yaml`` over defaults)."""
    directory = kachery_cloud_dir()
    shared_by = _shared_by(directory)
    file_values = _read_config_file(directory / CONFIG_FILE_NAME, shared_by)
    return ClientConfig(
        dir=directory,
        api_url=_env_str(ENV_API_URL) or file_values.get("api_url"),
        project=_env_str(ENV_PROJECT) or file_values.get("project"),
        multiuser=shared_by is not None or _env_bool(ENV_MULTIUSER, default=file_values.get("multiuser", False)),
        ephemeral=_env_bool(ENV_EPHEMERAL, default=False),
        quiet=_env_bool(ENV_QUIET, default=False),
        env_client_id=_env_str(ENV_CLIENT_ID),
        env_private_key=_env_str(ENV_PRIVATE_KEY),
        retry_sec=_env_seconds(ENV_RETRY_SEC, default=DEFAULT_RETRY_SEC),
    )


def _env_str(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _env_seconds(name: str, *, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:  # also refuses nan and inf
        raise ConfigError(f"environment variable {name}={raw!r} is not a number of seconds from 0 to 86400")
    return value


def _env_bool(name: str, *, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"environment variable {name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


# Parsing config.yaml on every call would cost more than the operations it configures, so the parsed
# content is reused while the file's inode, size, mtime and ctime are unchanged.
_file_cache: dict[Path, tuple[tuple[int, int, int, int], dict[str, Any]]] = {}

_KEY_TYPES: dict[str, type] = {"api_url": str, "project": str, "multiuser": bool}


def _shared_by(directory: Path) -> int | None:
    """The owner's uid if ``directory`` is shared (others may write to it), else None."""
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return st.st_uid if st.st_uid != os.geteuid() or st.st_mode & 0o022 else None


def _read_config_file(path: Path, shared_by: int | None = None) -> dict[str, Any]:
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if shared_by is not None else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return {}
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(
                f"{path} is a symbolic link in a shared directory: it is not followed, since another member could "
                "point it anywhere; ask the directory's owner to put a real config.yaml there"
            ) from None
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if shared_by is not None and (st.st_uid not in (os.geteuid(), shared_by, 0) or st.st_mode & 0o022):
            raise ConfigError(
                f"{path} may have been put there by another member of this shared directory (it is owned by uid "
                f"{st.st_uid}, or others may write it), so it is not used: whoever writes it could point you at "
                "another server. Ask the directory's owner to run `kachery-cloud multiuser init` on the directory"
            )
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = _file_cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read()
    finally:
        os.close(fd)
    values = _parse_config_text(path, raw)
    _file_cache[path] = (stamp, values)
    return values


def _parse_config_text(path: Path, raw: bytes) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a mapping of settings, not {type(data).__name__}")
    values: dict[str, Any] = {}
    for key, expected in _KEY_TYPES.items():
        if key not in data or data[key] is None:
            continue
        value = data[key]
        if not isinstance(value, expected):
            raise ConfigError(f"{path}: '{key}' must be a {expected.__name__}, got {type(value).__name__} ({value!r})")
        values[key] = value
    # Keys this version does not know are left alone: newer clients may share the same directory.
    return values


def check_api_url_can_be_saved(config: ClientConfig, api_url: str) -> None:
    """:class:`ConfigError` if :func:`save_api_url` would refuse: a shared (lab) directory."""
    if _shared_by(config.dir) is not None:
        raise ConfigError(
            f"{config.dir} is a shared lab directory: its owner sets the server, with `kachery-cloud multiuser init "
            f"{config.dir} --group GROUP --api-url {api_url}`"
        )


def save_api_url(config: ClientConfig, api_url: str) -> None:
    """Write ``api_url`` into this client directory's config.yaml, keeping its other settings (atomically: a
    kill leaves the old file or the new one). Not in a shared (lab) directory, whose config only its owner sets."""
    import yaml

    check_api_url_can_be_saved(config, api_url)
    path = config.dir / CONFIG_FILE_NAME
    config.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    values: dict[str, Any] = {}
    if path.exists():
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must contain a mapping of settings; fix or remove it")
    values["api_url"] = api_url
    write_config_file(path, values)


def write_config_file(path: Path, values: dict[str, Any], *, group: int = -1, mode: int = 0o600) -> None:
    """Write ``values`` as config.yaml at ``path`` whole or not at all (a temp file, synced, renamed into place),
    with ``group`` (-1: the user's) and ``mode``."""
    import yaml

    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(values, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if group != -1:
            os.chown(temp, -1, group)
        os.chmod(temp, mode)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
