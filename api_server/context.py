"""What a running server shares between requests: settings, database, storage, verifiers, the services.
Built once at start; the admin CLI works on the database alone and needs none of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .auth import RequestAuthenticator, server_id
from .db.session import Database
from .google_tokens import GoogleTokenVerifier
from .owner_proof import ensure_owner_token
from .rate_limits import LongPollSlots, RateLimiter
from .services import web_sessions
from .services.blobs import BlobService
from .services.feeds import FeedService
from .services.mutables import MutableService
from .services.tasks import TaskService
from .services.usage_meter import SESSION_KEY, UsageMeter
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
    usage_meter: UsageMeter
    # The token the server's owner proves itself with (owner_proof), and the file that holds it.
    owner_token: str
    owner_token_file: Path
    # Signs the web app's session and CSRF cookies; the same on every replica (from the database).
    web_secret: str

    @classmethod
    def build(cls, settings: Settings, storage: Storage) -> ServerContext:
        """Everything a server process needs, on a database brought up to date first (migrations)."""
        db = Database(
            settings.resolved_database_url,
            sqlite_busy_timeout_sec=settings.sqlite_busy_timeout_sec,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
            pool_timeout_sec=settings.database_pool_timeout_sec,
        )
        db.upgrade()
        with db.transaction() as session:
            this_server = server_id(session)
            web_secret = web_sessions.web_secret(session)
        wakeups = Wakeups(db)
        usage_meter = UsageMeter(db, settings.usage_flush_interval_sec)
        db.session_info[SESSION_KEY] = usage_meter
        owner_token, owner_token_file = ensure_owner_token(settings.resolved_data_dir)
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
                RateLimiter(
                    settings.rate_limit_per_client, settings.rate_limit_per_address, settings.rate_limit_storage
                ),
                this_server,
            ),
            google=google,
            blobs=blobs,
            mutables=MutableService(db),
            feeds=FeedService(db, wakeups),
            tasks=TaskService(db, wakeups, settings, blobs),
            wakeups=wakeups,
            long_polls=LongPollSlots(settings.max_long_polls_per_client),
            usage_meter=usage_meter,
            owner_token=owner_token,
            owner_token_file=owner_token_file,
            web_secret=web_secret,
        )

    @property
    def server_id(self) -> str:
        return self.authenticator.server_id

    @property
    def server_url(self) -> str:
        return self.settings.resolved_public_url
