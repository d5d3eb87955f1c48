"""Server layer 1: every setting of the API server in one object, from a YAML file plus the environment.

Precedence: explicit values (command-line options) > environment (``KACHERY_CLOUD_SERVER_<NAME>``, nested with
``__``, e.g. ``KACHERY_CLOUD_SERVER_S3__BUCKET``) > the YAML settings file > defaults. Without an ``s3``
section, ``kachery-cloud-server start`` runs an embedded nanio store inside the data directory.

Example settings file naming an external store::

    public_url: https://kachery.mylab.org
    database_url: postgresql+psycopg://kachery@db.mylab.org/kachery
    google_client_id: 1234-abc.apps.googleusercontent.com
    s3:
      endpoint_url: https://s3.us-east-2.amazonaws.com
      bucket: mylab-kachery
      region: us-east-2
      access_key_id: AKIA...
      secret_access_key: ...
      addressing_style: virtual
      key_prefix: kachery/
      public_base_url: https://mylab-kachery.s3.us-east-2.amazonaws.com
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import BaseModel, BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from kachery_cloud.protocol.hosts import is_loopback_host

ENV_PREFIX = "KACHERY_CLOUD_SERVER_"
DEFAULT_DATA_DIR = "~/.kachery-cloud-server"
DEFAULT_PORT = 7733
SETTINGS_FILE_NAME = "settings.yaml"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
MIB = 1 << 20
GIB = 1 << 30
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?) ?(?:([KMGTP])(?:I?B)?|B)?")


def parse_size(text: str | int) -> int:
    """``"64M"`` → 67108864: a number of bytes with an optional suffix K, M, G, T or P (powers of 1024, with or
    without a trailing B or iB; ``1.5G`` works too). :class:`ValueError` for anything else."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE_RE.fullmatch(str(text).strip().upper())
    if match is None:
        raise ValueError(f"{text!r} is not a size (like 1024, 500M, 2G or 1.5T)")
    number, suffix = match.groups()
    return int(float(number) * 1024 ** ("_KMGTP".index(suffix) if suffix else 0))


# A size in the settings file or the environment: an integer of bytes, or with a suffix ("64M").
Bytes = Annotated[int, BeforeValidator(lambda v: parse_size(v) if isinstance(v, str) else v)]


class S3Settings(BaseModel):
    """An S3-compatible object store holding the blobs."""

    endpoint_url: str
    bucket: str
    region: str = "us-east-1"
    access_key_id: str
    secret_access_key: SecretStr
    addressing_style: Literal["path", "virtual"] = "path"
    key_prefix: str = ""
    # Where clients reach the store, when that differs from where this server does (endpoint_url).
    client_endpoint_url: str | None = None
    # Where anonymous readers fetch objects of public projects (a CDN or a public bucket URL); None = the
    # server hands out presigned GETs for public projects too.
    public_base_url: str | None = None

    @field_validator("key_prefix")
    @classmethod
    def _prefix_is_clean(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("key_prefix must be relative and must not contain '..'")
        return value


class Settings(BaseSettings):
    """The whole configuration of one API server process."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Path(DEFAULT_DATA_DIR)
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    # The address users' browsers and clients reach (behind a proxy it differs from host:port).
    public_url: str | None = None
    # SQLAlchemy URL; default: SQLite in the data directory.
    database_url: str | None = Field(None, repr=False)  # may carry a password
    # PostgreSQL connections this process keeps open, the extra ones it may open under load, and how long a
    # request waits for a free one before it is answered 503. Each replica has its own pool: N replicas open up
    # to N * (size + overflow) connections, which must stay under the database's max_connections.
    database_pool_size: int = Field(10, ge=1, le=1000)
    database_max_overflow: int = Field(20, ge=0, le=1000)
    database_pool_timeout_sec: float = Field(30.0, gt=0, le=3600)
    # The embedded store's port. Default: a free loopback port when the server listens on loopback only;
    # port + 1 when it listens for other machines too (the store then listens on the same address as the API,
    # and clients reach it directly).
    store_port: int | None = Field(None, ge=1, le=65535)
    # Where clients reach the embedded store, when that is not http://<public_url's host>:<store_port> (a TLS
    # proxy in front of it, say).
    store_public_url: str | None = None
    s3: S3Settings | None = None
    # With a Google OAuth client id, registration goes through Google sign-in on the server's page.
    google_client_id: str | None = None
    google_certs_url: str = GOOGLE_CERTS_URL
    # auto: google if google_client_id is set, else local (see registration_mode).
    registration: Literal["auto", "local", "google", "none"] = "auto"
    signature_window_sec: int = Field(60, ge=5, le=3600)
    # How long a browser stays signed in to the web app (it can sign out sooner).
    web_session_ttl_sec: int = Field(7 * 86400, ge=60, le=365 * 86400)
    registration_ttl_sec: int = Field(900, ge=60)
    default_storage_quota_bytes: Bytes | None = Field(None, ge=0)
    # How long a presigned URL stays valid; clients ask for a fresh one when theirs has expired.
    presigned_url_ttl_sec: int = Field(3600, ge=1, le=7 * 24 * 3600)
    # An upload not completed within this time (renewed while part URLs are asked for) is aborted.
    upload_ttl_sec: int = Field(24 * 3600, ge=1)
    # Blobs up to this size go up in one PUT (when the store checks SHA-1 checksums); larger ones in parts.
    single_put_max_bytes: Bytes = Field(64 * MIB, ge=0, le=5 * GIB)
    # Part size of multipart uploads (S3 needs >= 5 MiB); raised for huge blobs to stay within 10,000 parts.
    multipart_part_bytes: Bytes = Field(16 * MIB, ge=5 * MIB, le=5 * GIB)
    # auto: trust the store's own SHA-1 check where the start-up probe shows it enforces one, re-hash
    # otherwise; rehash: always re-hash uploads on the server.
    verify_uploads: Literal["auto", "rehash"] = "auto"
    # How long a write waits for SQLite's lock (held by another process) before it is answered 503.
    sqlite_busy_timeout_sec: float = Field(30.0, gt=0, le=3600)
    # Usage counters (requests, bytes in and out per project and day) are added up in each API process and
    # written this often, in one transaction: no request writes a counter row itself.
    usage_flush_interval_sec: float = Field(1.0, gt=0, le=3600)
    # A worker holds a task for this long and renews the lease every third of it while the task runs; a worker
    # that stops renewing (killed, cut off) loses the task, which goes to another worker.
    task_lease_sec: int = Field(30, ge=1, le=3600)
    # A task whose worker was lost this many times ends in error instead of being handed out again.
    task_max_attempts: int = Field(3, ge=1, le=100)
    # Requests per client (signed requests, by client id) and per network address (requests without a valid
    # signature), in the notation of the limits library: "200/second;6000/minute". Over it: 429 with
    # Retry-After, which clients wait out. Counted per API process. Empty or null: no limit.
    rate_limit_per_client: str | None = "200/second;6000/minute"
    rate_limit_per_address: str | None = "200/second;6000/minute"
    # Where the counts live: "memory://" (each API process counts for itself, so behind N replicas a client may
    # reach N times the limit) or a shared store in the limits library's notation, "redis://host:6379/0" (needs
    # the redis package), which every replica counts in.
    rate_limit_storage: str = "memory://"
    # Proxies (IP addresses) whose X-Forwarded-For / X-Forwarded-Proto name the real client; none by default, so a
    # client cannot pick the address it is counted under. Behind a proxy on this machine: ["127.0.0.1"].
    trusted_proxies: list[str] = Field(default_factory=list)
    # Pending (browser) registrations one address may have open at once; the same client asking again gets its
    # pending one back.
    max_pending_registrations_per_address: int = Field(20, ge=1)
    # Request heads: at most this many bytes and header fields, complete within this many seconds.
    max_head_bytes: Bytes = Field(32 << 10, ge=4096, le=1 << 20)
    max_headers: int = Field(100, ge=10, le=10_000)
    head_timeout_sec: float = Field(10.0, gt=0, le=600)
    # Open connections per client address (trusted proxies exempt), and long-polls one client may have waiting.
    max_connections_per_address: int = Field(512, ge=1)
    max_long_polls_per_client: int = Field(64, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address") from None
        return value

    @field_validator("rate_limit_per_client", "rate_limit_per_address")
    @classmethod
    def _limits_parse(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # no limit
        if not parse_many(value):
            raise ValueError(f"no rate limit in {value!r}")
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _storage_is_known(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if "://" not in value or scheme not in ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster"):
            raise ValueError("use memory:// or a Redis URL (redis://host:6379/0)")
        if scheme.startswith("redis"):
            try:
                import redis  # noqa: F401
            except ImportError:
                raise ValueError("a Redis rate-limit storage needs the redis package: pip install redis") from None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file is the one load_settings names in model_config (none for plain Settings()).
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().absolute()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_data_dir / 'server.db'}"

    @property
    def resolved_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        if self.host in ("0.0.0.0", "::", ""):
            # Listening on every address: this machine's name is the best guess at one that others reach.
            return f"http://{socket.gethostname()}:{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def serves_other_machines(self) -> bool:
        """Whether the API listens on more than loopback (then so does the embedded store)."""
        return not is_loopback_host(self.host)

    @property
    def embedded_store_host(self) -> str:
        """The address the embedded store listens on: the API's own when that is not loopback only."""
        return self.host if self.serves_other_machines else "127.0.0.1"

    def embedded_store_url(self, port: int) -> str:
        """Where clients reach the embedded store listening on ``port``."""
        if self.store_public_url:
            return self.store_public_url.rstrip("/")
        if not self.serves_other_machines:
            return f"http://127.0.0.1:{port}"
        host = urlsplit(self.resolved_public_url).hostname or "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def registration_mode(self) -> Literal["local", "google", "none"]:
        """local: the server's owner registers from this machine by proving who they are (a token file only
        they can read); google: also Google sign-in in the browser; none: only ``admin register-client``.
        Invitations work in every mode."""
        if self.registration != "auto":
            return self.registration
        return "google" if self.google_client_id else "local"


def load_settings(settings_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: ``overrides`` (non-None values only) > environment > ``settings_file`` > defaults.

    Without ``settings_file``, ``<data dir>/settings.yaml`` is read if it exists.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    if settings_file is None:
        # The data directory comes from the options or the environment, never from the file it contains.
        data_dir = given.get("data_dir") or os.environ.get(f"{ENV_PREFIX}DATA_DIR") or DEFAULT_DATA_DIR
        candidate = Path(data_dir).expanduser().absolute() / SETTINGS_FILE_NAME
        settings_file = candidate if candidate.is_file() else None
    elif not settings_file.is_file():
        raise FileNotFoundError(f"settings file {settings_file} does not exist")
    if settings_file is None:
        return Settings(**given)

    class SettingsFromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=settings_file)

    return SettingsFromFile(**given)
