"""Every test gets its own empty client directory and an environment free of the user's settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import PostgresDatabases, RunningServer, start_server


@pytest.fixture(autouse=True)
def kachery_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("KACHERY_"):
            monkeypatch.delenv(name)
    directory = tmp_path / "kachery-cloud"
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(directory))
    monkeypatch.setenv("KACHERY_CLOUD_QUIET", "1")
    return directory


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases
) -> Iterator[RunningServer]:
    """An embedded server (nanio + the API) per test module and database backend."""
    database_url = postgres.create() if request.param == "postgresql" else None
    running = start_server(tmp_path_factory.mktemp(f"server-{request.param}"), database_url=database_url)
    yield running
    running.stop()


@pytest.fixture
def connected(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> RunningServer:
    """This test's client directory pointed at ``server`` (not yet registered)."""
    from kachery_cloud._connection import forget_clients

    monkeypatch.setenv("KACHERY_CLOUD_API_URL", server.url)
    forget_clients()
    return server
