"""Server layer 3: the S3 side. One boto3 client, made from :class:`S3Settings`; object keys per project.

Blob bytes never pass through the API server: this module presigns URLs for clients and administers the
bucket. Presigning and verification of uploads grow here with the cloud store/load.
"""

from __future__ import annotations

from typing import Any

from .settings import S3Settings


class Storage:
    """The bucket of one server, reached with the server's own credentials."""

    def __init__(self, settings: S3Settings, client: Any = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.client = client if client is not None else make_s3_client(settings)

    def blob_key(self, project_id: str, sha1: str) -> str:
        """``<prefix>projects/<project>/sha1/aa/bb/cc/<sha1>``: the cache layout, under one prefix per project."""
        return f"{self.settings.key_prefix}projects/{project_id}/sha1/{sha1[0:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (the embedded store starts empty)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
        self.client.create_bucket(Bucket=self.bucket)


def make_s3_client(settings: S3Settings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key.get_secret_value(),
        config=config,
    )
