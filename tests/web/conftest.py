"""The web app's tests: Debian's chromium (``/usr/bin/chromium``, which ``.ci/run`` installs with apt-get), driven
by Playwright, against a real server. Playwright never downloads a browser here: it is given chromium's path.

Every page a test visits is saved as a screenshot under ``test-output/web/`` (or ``$KACHERY_CLOUD_TEST_OUTPUT``).
Without chromium the tests are skipped, unless ``KACHERY_CLOUD_REQUIRE_BROWSER=1`` (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..servers import RunningServer, clean_env, start_server
from .web_kit import REPO

CHROMIUM = os.environ.get("KACHERY_CLOUD_TEST_CHROMIUM", "/usr/bin/chromium")
# As root, chromium needs --no-sandbox; the network flags stop it from reaching for Google's services, which
# this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("KACHERY_CLOUD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; CI installs it and requires it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def new_browser(browser: Any) -> Iterator[Any]:
    """A factory of fresh browser profiles (no cookies), all closed after the test."""
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, dict[str, Any], Path]]:
    """A server with a private project ``lab`` and a public one ``open-data``, filled by the owner's client
    (:mod:`tests.web.lab_content`). Yields the server, what was made, and the owner's client directory."""
    server = start_server(tmp_path_factory.mktemp("web-lab"))
    server.admin("create-project", "lab", "--label", "Spike sorting lab")
    server.admin("create-project", "open-data", "--public", "--label", "Open data")
    owner_dir = tmp_path_factory.mktemp("owner-client")
    env = clean_env(KACHERY_CLOUD_DIR=str(owner_dir), KACHERY_CLOUD_API_URL=server.url)
    filled = subprocess.run(
        [sys.executable, "-m", "tests.web.lab_content"], env=env, capture_output=True, text=True, timeout=240, cwd=REPO
    )
    assert filled.returncode == 0, filled.stderr
    made = json.loads(filled.stdout.strip().splitlines()[-1])
    yield server, made, owner_dir
    server.stop()
