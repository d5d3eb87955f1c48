"""Wake-ups for long-polls: a request waiting for something (new feed messages, later tasks) sleeps on a topic
and is woken as soon as a writer publishes that topic, in this process or, on PostgreSQL, in any replica.

- In-process: :meth:`Wakeups.wake` sets the asyncio events of this process's waiters (thread-safe, so the
  sync endpoints that write can call it after their commit).
- Across replicas: a writer adds ``pg_notify`` to its transaction (:meth:`Wakeups.publish_in`); PostgreSQL
  delivers it at commit to every replica's listener thread, which wakes the local waiters (a replica ignores
  its own notifications: it has woken its waiters already). When a listener connection was lost, it wakes
  every waiter on reconnecting, since notifications sent in the gap are gone.

A wake-up only tells a waiter to look again; what it finds is decided by the database, so a spurious or
doubled wake-up costs a query and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from collections.abc import Iterator

from sqlalchemy import text
from sqlalchemy.orm import Session

from .db.session import Database

log = logging.getLogger("kachery_cloud_server")

CHANNEL = "kachery_wakeups"
_RECONNECT_SEC = (0.5, 10.0)  # first and longest wait between listener reconnections
# A connection that dies without a word (a restarted database host, a dropped NAT entry) is noticed in ~1 min.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


class Wakeups:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None
        self._origin = secrets.token_hex(8)  # names this process in its notifications

    def start(self) -> None:
        """Start listening for other replicas' notifications (PostgreSQL only; SQLite has one server)."""
        if not self.db.is_sqlite and self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="kachery-wakeups", daemon=True)
            self._listener.start()

    @property
    def closing(self) -> bool:
        """True once the server is shutting down: long-polls answer at once instead of waiting."""
        return self._closed.is_set()

    def close(self) -> None:
        """Answer every waiting long-poll now (on shutdown, so they do not hold the server up for their wait)."""
        self._closed.set()
        self.wake_all()

    def close_from_signal_handler(self) -> None:
        """:meth:`close` for a signal handler: the lock it takes may be held by the code the signal interrupted
        (in the same thread), so the waking happens on another thread."""
        self._closed.set()
        threading.Thread(target=self.wake_all, name="kachery-wakeups-close", daemon=True).start()

    @contextlib.contextmanager
    def subscription(self, topic: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``topic`` is published while the block runs. Subscribe before looking at the
        database, so a publication between the look and the wait is not missed."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(topic, set()).add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiters = self._waiters.get(topic)
                if waiters is not None:
                    waiters.discard(entry)
                    if not waiters:
                        del self._waiters[topic]

    def wake(self, topic: str) -> None:
        """Wake this process's waiters on ``topic`` (callable from any thread)."""
        with self._lock:
            entries = list(self._waiters.get(topic, ()))
        _set_all(entries)

    def wake_all(self) -> None:
        with self._lock:
            entries = [entry for waiters in self._waiters.values() for entry in waiters]
        _set_all(entries)

    def publish_in(self, session: Session, topic: str) -> None:
        """Have PostgreSQL tell every replica about ``topic`` when ``session``'s transaction commits."""
        if not self.db.is_sqlite:
            payload = f"{self._origin} {topic}"
            session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})

    def _listen(self) -> None:
        import psycopg

        # The engine's own connection arguments (a password with spaces or '@' survives, unlike a URL string).
        args, kwargs = self.db.engine.dialect.create_connect_args(self.db.engine.url)
        kwargs = {**{k: v for k, v in kwargs.items() if k != "context"}, **_KEEPALIVES, "autocommit": True}
        delay = _RECONNECT_SEC[0]
        while not self._closed.is_set():
            try:
                with psycopg.connect(*args, **kwargs) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self.wake_all()  # whatever was published while this replica was not listening
                    delay = _RECONNECT_SEC[0]
                    while not self._closed.is_set():
                        for notification in connection.notifies(timeout=1.0):
                            origin, _, topic = notification.payload.partition(" ")
                            if origin != self._origin:
                                self.wake(topic)
            except Exception as e:
                if self._closed.is_set():
                    return
                log.warning("wake-up listener lost its PostgreSQL connection (%s: %s); reconnecting in %.1f s",
                            type(e).__name__, e, delay)  # fmt: skip
                self._closed.wait(delay)
                delay = min(_RECONNECT_SEC[1], delay * 2)


def _set_all(entries: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
    for loop, event in entries:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(event.set)
