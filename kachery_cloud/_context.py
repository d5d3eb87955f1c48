"""Builds the objects the feature modules work with from the configuration in force right now."""

from __future__ import annotations

from pathlib import Path

from .config import ClientConfig, load_config
from .local import LocalDirectory

# A single-user directory's objects hold nothing but paths: made once per directory (every cache hit asks for
# one). A shared directory's are made anew each time: they look at the directory as it is now.
_single_user: dict[Path, LocalDirectory] = {}


def local_directory(config: ClientConfig | None = None) -> LocalDirectory:
    """The client directory as configured now (``KACHERY_CLOUD_DIR``, multiuser mode)."""
    config = config or load_config()
    if config.multiuser:
        return LocalDirectory(config.dir, multiuser=True)
    found = _single_user.get(config.dir)
    if found is None:
        found = _single_user[config.dir] = LocalDirectory(config.dir, multiuser=False)
    return found
