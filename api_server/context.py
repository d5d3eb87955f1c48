"""What a running server shares between requests: settings, database, storage, verifiers, the services.
Built once at start; the admin CLI works on the database alone and needs none of it."""

from __future__ import annotations

from dataclasses import dataclass

from .auth import RequestAuthenticator
from .db.session import Database
from .google_tokens import GoogleTokenVerifier
from .rate_limits import RateLimiter
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

    @classmethod
    def build(cls, settings: Settings, storage: Storage) -> ServerContext:
        db = Database(settings.resolved_database_url)
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
            ),
            google=google,
            blobs=blobs,
            mutables=MutableService(db),
            feeds=FeedService(db, wakeups),
            tasks=TaskService(db, wakeups, settings, blobs),
            wakeups=wakeups,
        )

    @property
    def server_url(self) -> str:
        return self.settings.resolved_public_url
