"""Helpers of the web app's tests: screenshots, signing a browser in, running another person's client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..servers import RunningServer, clean_env

REPO = Path(__file__).resolve().parents[2]


def screenshot_dir() -> Path:
    where = Path(os.environ.get("KACHERY_CLOUD_TEST_OUTPUT", REPO / "test-output")) / "web"
    where.mkdir(parents=True, exist_ok=True)
    return where


def shoot(page: Any, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot of ``page`` (whole, or what the window shows) as ``<name>.png`` with the test output."""
    path = screenshot_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def web_login(server: RunningServer, *args: str) -> str:
    """A one-time sign-in link from ``admin web-login``."""
    return server.admin("web-login", *args).stdout.strip().splitlines()[-1]


def sign_in(context: Any, server: RunningServer, *args: str) -> Any:
    """A page of ``context``, signed in with a fresh ``admin web-login`` link (as the owner, or ``--user``)."""
    page = context.new_page()
    page.goto(web_login(server, *args))
    page.click("#sign-in-button")
    page.wait_for_url(f"{server.url}/")
    return page


def run_client(client_dir: Path, server: RunningServer, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` as a client with its own directory (another person's machine)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(KACHERY_CLOUD_DIR=str(client_dir), KACHERY_CLOUD_API_URL=server.url, **env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
