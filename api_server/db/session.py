"""The engine, transactions and migrations: one :class:`Database` per server process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_STARTUP_LOCK_KEY = 7733_0001  # an arbitrary constant naming "kachery-cloud server startup" among advisory locks


class Database:
    """Owns the engine for one database URL (``sqlite:///...`` or ``postgresql+psycopg://...``)."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_busy_timeout_sec: float = 30.0,
        pool_size: int = 10,
        max_overflow: int = 20,
        pool_timeout_sec: float = 30.0,
    ) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # FastAPI runs sync endpoints in a thread pool: one connection may serve several threads in turn.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": sqlite_busy_timeout_sec}
        else:
            # A connection the database closed (restart, idle timeout) is noticed before a request uses it.
            kwargs.update(
                pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout_sec
            )
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_on_connect)
            event.listen(self.engine, "begin", _sqlite_on_begin)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reads on SQLite begin without the write lock (see _sqlite_on_begin), so that they run beside a writer.
        self._read_sessions = sessionmaker(self.engine.execution_options(kachery_read=True), expire_on_commit=False)
        # What every session carries in Session.info (the server's usage meter).
        self.session_info: dict[str, Any] = {}

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed if the block succeeds, rolled back if it raises."""
        with self._sessions(info=self.session_info) as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A transaction for a block that only reads: on SQLite it takes no write lock, so it neither waits for a
        writer nor holds one up. (A write in it may fail with "database is locked" on SQLite.)"""
        with self._read_sessions(info=self.session_info) as session, session.begin():
            yield session

    def ping(self) -> None:
        """Ask the database for nothing (``SELECT 1``); OperationalError if it cannot be reached. Outside a
        transaction of ours, so that on SQLite it takes no write lock (every transaction of ours does)."""
        if self.is_sqlite:
            with self.engine.raw_connection() as connection:
                connection.cursor().execute("SELECT 1")  # pysqlite begins nothing for a SELECT
            return
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def upgrade(self) -> None:
        """Apply every migration not yet applied (idempotent)."""
        from alembic import command

        with self.engine.begin() as connection:
            if not self.is_sqlite:
                # Several replicas may start at once; one migrates, the others wait and find nothing to do.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_STARTUP_LOCK_KEY})")
            command.upgrade(alembic_config(self.url, connection), "head")

    def serialize_startup(self, session: Session) -> None:
        """Hold the startup lock until ``session``'s transaction ends (SQLite: its write lock already does)."""
        if not self.is_sqlite:
            session.connection().exec_driver_sql(f"SELECT pg_advisory_xact_lock({_STARTUP_LOCK_KEY})")

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str, connection: Any = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take over transaction control from the sqlite3 module, so that "begin" below really starts them.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer (admin CLI beside the server)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
    cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock at the start, so two writers queue on busy_timeout instead of one
    # failing with "database is locked" when it upgrades a read lock mid-transaction. Reads (Database.read) take
    # a snapshot instead, and no lock.
    read = connection.get_execution_options().get("kachery_read", False)
    connection.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")
