"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_python(
    code: str, *, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with this process's environment (plus ``env``)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def blob_files(directory: Path) -> list[Path]:
    """Every file in the blob tree, temp files included."""
    return sorted(p for p in (directory / "sha1").rglob("*") if p.is_file())


def bytes_read_by_this_process() -> int:
    """The kernel's count of bytes this process has read (read/pread syscalls)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")
