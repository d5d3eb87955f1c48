"""What a running server shares between requests: settings, database, storage, verifiers, the services.
Built once at start; the admin CLI works on the database alone and needs none of it."""

from __future__ import annotations

from dataclasses import dataclass

from .auth import RequestAuthenticator, server_id
from .db.session import Database
from .google_tokens import GoogleTokenVerifier
from .rate_limits import LongPollSlots, RateLimiter
from .services.blobs import BlobService
from .services.feeds import FeedService
from .services.mutables import MutableService
from .services.tasks import TaskService
from .settings import Settings
from .storage import Storage
from .wakeups import Wakeups


@dataclass
class ServerContext:
    settings: Settings
    db: Database
    storage: Storage
    authenticator: RequestAuthenticator
    google: GoogleTokenVerifier | None
    blobs: BlobService
    mutables: MutableService
    feeds: FeedService
    tasks: TaskService
    wakeups: Wakeups
    long_polls: LongPollSlots

    @classmethod
    def build(cls, settings: Settings, storage: Storage) -> ServerContext:
        """Everything a server process needs, on a database brought up to date first (migrations)."""
        db = Database(settings.resolved_database_url, sqlite_busy_timeout_sec=settings.sqlite_busy_timeout_sec)
        db.upgrade()
        with db.transaction() as session:
            this_server = server_id(session)
        wakeups = Wakeups(db)
        blobs = BlobService(db, storage, settings)
        google = (
            GoogleTokenVerifier(settings.google_client_id, settings.google_certs_url)
            if settings.google_client_id
            else None
        )
        return cls(
            settings=settings,
            db=db,
            storage=storage,
            authenticator=RequestAuthenticator(
                db,
                settings.signature_window_sec,
                RateLimiter(settings.rate_limit_per_client, settings.rate_limit_per_address),
                this_server,
            ),
            google=google,
            blobs=blobs,
            mutables=MutableService(db),
            feeds=FeedService(db, wakeups),
            tasks=TaskService(db, wakeups, settings, blobs),
            wakeups=wakeups,
            long_polls=LongPollSlots(settings.max_long_polls_per_client),
        )

    @property
    def server_id(self) -> str:
        return self.authenticator.server_id

    @property
    def server_url(self) -> str:
        return self.settings.resolved_public_url
