"""Builds the objects the feature modules work with from the configuration in force right now."""

from __future__ import annotations

from .config import ClientConfig, load_config
from .local import LocalDirectory


def local_directory(config: ClientConfig | None = None) -> LocalDirectory:
    """The client directory as configured now (``KACHERY_CLOUD_DIR``, multiuser mode)."""
    config = config or load_config()
    return LocalDirectory(config.dir, multiuser=config.multiuser)
