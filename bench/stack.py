"""The system under test for the benchmark suite: an API server (embedded nanio + SQLite, or configured for
another S3 endpoint), the bucket it uses, a boto3 client and presigner on that same bucket for the baselines,
and client directories that share one registered identity but start with an empty cache and hash memo."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers import RunningServer, SeaweedFS, start_server

_IDENTITY_FILES = ("config.yaml", "private.pem", "public.pem")

# The server as deployed, except that no rate limit applies: the bench's client processes share one identity
# and one address, which a lab's many clients do not (each has its own limit), and it measures the server.
SERVER_SETTINGS: dict[str, Any] = {
    "usage_flush_interval_sec": 1.0,  # the default (the tests' servers write usage more often)
    "rate_limit_per_client": None,
    "rate_limit_per_address": None,
}


@dataclass
class S3Target:
    """Another S3 endpoint to run the suite against (the embedded nanio is always run)."""

    name: str
    endpoint_url: str
    bucket: str
    access_key_id: str
    secret_access_key: str

    def settings(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint_url,
            "bucket": self.bucket,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
        }


@dataclass
class Stack:
    name: str
    server: RunningServer
    s3: Any  # boto3 client with the server's credentials: the baselines use the very same bucket
    bucket: str
    endpoint_url: str
    work: Path
    _counter: itertools.count

    def fresh_client(self) -> Path:
        """A new client directory with the registered identity but nothing cached and nothing memoized; made
        the current one (``KACHERY_CLOUD_DIR``)."""
        from kachery_cloud._connection import forget_clients

        directory = self.work / f"client-{next(self._counter)}"
        directory.mkdir()
        for name in _IDENTITY_FILES:
            source = self.work / "client-template" / name
            if source.exists():
                shutil.copy2(source, directory / name)
        os.environ["KACHERY_CLOUD_DIR"] = str(directory)
        forget_clients()
        return directory

    def use_client(self, directory: Path) -> None:
        from kachery_cloud._connection import forget_clients

        os.environ["KACHERY_CLOUD_DIR"] = str(directory)
        forget_clients()

    def drop_client(self, directory: Path) -> None:
        shutil.rmtree(directory, ignore_errors=True)

    def client_env(self, directory: Path) -> dict[str, str]:
        """The environment for a client subprocess using ``directory``."""
        return {**os.environ, "KACHERY_CLOUD_DIR": str(directory)}


@contextmanager
def running_stack(work: Path, target: S3Target | None = None, *, seaweedfs: bool = False) -> Iterator[Stack]:
    """Start an API server (embedded nanio, another endpoint, or a SeaweedFS started here) and register a
    client template with it."""
    import kachery_cloud as kcl

    work.mkdir(parents=True)
    weed: SeaweedFS | None = None
    settings: dict[str, Any] = dict(SERVER_SETTINGS)
    name = "embedded nanio + SQLite"
    if seaweedfs:
        weed = SeaweedFS(work / "weed")
        target = S3Target("SeaweedFS", weed.endpoint, "kachery-bench", weed.ACCESS_KEY, weed.SECRET_KEY)
    if target is not None:
        settings["s3"] = target.settings()
        name = f"{target.name} + SQLite"
    server = None
    try:
        if target is not None:
            _ensure_bucket(target)
        server = start_server(work / "server", settings=settings)
        s3, bucket = server.s3_client()
        endpoint = s3.meta.endpoint_url
        os.environ.update(
            KACHERY_CLOUD_API_URL=server.url, KACHERY_CLOUD_DIR=str(work / "client-template"), KACHERY_CLOUD_QUIET="1"
        )
        kcl.init(quiet=True)
        yield Stack(name, server, s3, bucket, endpoint, work, itertools.count())
    finally:
        if server is not None:
            server.stop()
        if weed is not None:
            weed.stop()


def _ensure_bucket(target: S3Target) -> None:
    s3 = boto3_client(target.endpoint_url, target.access_key_id, target.secret_access_key)
    try:
        s3.head_bucket(Bucket=target.bucket)
    except Exception:
        s3.create_bucket(Bucket=target.bucket)


def boto3_client(endpoint_url: str, access_key_id: str, secret_access_key: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
