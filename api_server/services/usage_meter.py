"""Usage counted in memory and written in batches.

Counting a request in the database in the request's own transaction made every request of a project, reads
included, a write to one row (the project's counter of the day), whose lock was held until commit: with several
replicas, requests of one project queued on it. A :class:`UsageMeter` adds the counts up in the process and
writes them every ``usage_flush_interval_sec``, one upsert per (project, day) touched, in one transaction.

What a crash loses: the counts of the last interval, never stored bytes or quotas (those change in the
transactions that store the data, :func:`usage.charge`). A graceful stop writes what is pending.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..db.session import Database
from .usage import ADD_USAGE, today

log = logging.getLogger("kachery_cloud_server")

# The session key under which services find the meter (Database.transaction puts it in every session).
SESSION_KEY = "usage_meter"

_Key = tuple[str, str]  # (project_id, day)


class UsageMeter:
    def __init__(self, db: Database, interval_sec: float) -> None:
        self.db = db
        self.interval_sec = interval_sec
        self._pending: defaultdict[_Key, list[int]] = defaultdict(lambda: [0, 0, 0])
        self._lock = threading.Lock()  # guards _pending
        self._flushing = threading.Lock()  # one flush at a time, so that counts are written in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, project_id: str, *, requests: int = 0, bytes_in: int = 0, bytes_out: int = 0) -> None:
        with self._lock:
            counts = self._pending[(project_id, today())]
            counts[0] += requests
            counts[1] += bytes_in
            counts[2] += bytes_out

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kachery-usage-meter", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the writer and write what is pending (a graceful stop loses no count)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()

    def flush(self) -> None:
        """Write the pending counts now (the usage pages of this process call it before they read)."""
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, defaultdict(lambda: [0, 0, 0])
            if not batch:
                return
            # Sorted, so that replicas flushing together lock the rows in one order and cannot deadlock.
            rows = [
                {"project_id": p, "day": d, "requests": c[0], "bytes_in": c[1], "bytes_out": c[2]}
                for (p, d), c in sorted(batch.items())
            ]
            try:
                with self.db.transaction() as session:
                    session.execute(ADD_USAGE, rows)
            except IntegrityError:
                self._write_one_by_one(rows)  # a project deleted meanwhile: its counts go with it
            except SQLAlchemyError:
                self._restore(batch)  # the database is away: keep the counts for the next flush
                raise

    def _write_one_by_one(self, rows: list[dict]) -> None:
        for row in rows:
            try:
                with self.db.transaction() as session:
                    session.execute(ADD_USAGE, row)
            except IntegrityError:
                log.info("usage of project %s not recorded: the project is gone", row["project_id"])

    def _restore(self, batch: dict[_Key, list[int]]) -> None:
        with self._lock:
            for key, counts in batch.items():
                pending = self._pending[key]
                for i, n in enumerate(counts):
                    pending[i] += n

    def _run(self) -> None:
        while not self._stop.wait(self.interval_sec):
            try:
                self.flush()
            except Exception as exc:  # logged; the counts wait for the next flush
                log.warning("writing usage counts failed (kept for the next try): %s", str(exc).splitlines()[0])
