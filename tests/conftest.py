"""Every test gets its own empty client directory and an environment free of the user's settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def kachery_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("KACHERY_"):
            monkeypatch.delenv(name)
    directory = tmp_path / "kachery-cloud"
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(directory))
    monkeypatch.setenv("KACHERY_CLOUD_QUIET", "1")
    return directory
