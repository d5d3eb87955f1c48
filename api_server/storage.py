"""Server layer 3: the S3 side. One boto3 client, made from :class:`S3Settings`; object keys per project;
presigned URLs for clients; verification of what they uploaded.

Blob bytes do not pass through the API server: clients PUT and GET them with the URLs signed here. (Small
blobs are the exception: a client may send up to 4 MiB of them inside one request, which the server writes.)

Object keys (under ``key_prefix``):

- ``projects/<p>/sha1/aa/bb/cc/<sha1>``: written only by a single presigned PUT that carries the signed
  ``x-amz-checksum-sha1`` header, and only on a store that enforces that header and refuses unsigned headers
  (probed at start). Every write to this key, by anyone, therefore stores exactly the bytes with that hash;
  where the store honours ``If-None-Match: *`` (probed too; signed into the URL) none writes it a second time.
- ``projects/<p>/sha1/aa/bb/cc/<sha1>.<upload id>``: a multipart upload completed by the server, then re-hashed
  before it is recorded. No client ever gets a URL that could write it again: part URLs die with the upload.
- ``projects/<p>/packs/aa/<sha1 of the pack>``: small blobs sent inline, written by the server as one object
  (their bytes one after the other); each blob's row records its offset. One PUT instead of a thousand, and a
  client loading many of them reads a range of the pack instead of making a request per blob.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .settings import S3Settings

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Presigned:
    """A URL for one HTTP request, and the headers the request must carry (they are signed into it)."""

    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class ObjectHead:
    size: int
    # base64: the SHA-1 the store checked the object's bytes against when they were written, as S3 reports it
    # (or, on the embedded store, its x-amz-meta-kachery-sha1 stamp); None if the store keeps none.
    checksum_sha1: str | None


# The embedded store's stamp of the SHA-1 it checked (api_server.checked_store), as boto3 names user metadata.
_VERIFIED_SHA1_METADATA = "kachery-sha1"


class Storage:
    """The bucket of one server, reached with the server's own credentials."""

    def __init__(self, settings: S3Settings, client: Any = None, *, url_ttl_sec: int = 3600) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.client = client if client is not None else make_s3_client(settings)
        # URLs for clients are signed for the address they reach the store at (SigV4 signs the Host).
        self.url_signer = (
            make_s3_client(settings, endpoint_url=settings.client_endpoint_url)
            if settings.client_endpoint_url and client is None
            else self.client
        )
        self.url_ttl_sec = url_ttl_sec
        # Whether the store refuses a body whose x-amz-checksum-sha1 does not match, and refuses headers nobody
        # signed (set by probe_checksums).
        self.enforces_sha1 = False
        # Whether the store refuses a PUT with If-None-Match: * onto an existing object (set by probe_checksums).
        self.refuses_overwrites = False

    # ---------------------------------------------------------------- keys

    def blob_key(self, project_id: str, sha1: str) -> str:
        """``<prefix>projects/<project>/sha1/aa/bb/cc/<sha1>``: the cache layout, under one prefix per project."""
        return f"{self.settings.key_prefix}projects/{project_id}/sha1/{sha1[0:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"

    def pack_key(self, project_id: str, pack_sha1: str) -> str:
        return f"{self.settings.key_prefix}projects/{project_id}/packs/{pack_sha1[0:2]}/{pack_sha1}"

    def upload_key(self, project_id: str, sha1: str, upload_id: str) -> str:
        """A key of its own for one multipart upload, beside the blob's canonical key."""
        return f"{self.blob_key(project_id, sha1)}.{upload_id}"

    # ---------------------------------------------------------------- presigning

    def presign_put(
        self, key: str, size: int, sha1_hex: str, *, once: bool | None = None, internal: bool = False
    ) -> Presigned:
        """A single PUT of exactly ``size`` bytes whose SHA-1 the store checks (``x-amz-checksum-sha1``); with
        ``once`` (default: where the store supports it), only onto a key that holds no object yet. ``internal``:
        for this server's own use, at the address it reaches the store at."""
        checksum = sha1_base64(sha1_hex)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ContentLength": size, "ChecksumSHA1": checksum}
        headers = {"x-amz-checksum-sha1": checksum}
        if self.refuses_overwrites if once is None else once:
            params["IfNoneMatch"] = "*"
            headers["If-None-Match"] = "*"
        signer = self.client if internal else self.url_signer
        url = signer.generate_presigned_url("put_object", Params=params, ExpiresIn=self.url_ttl_sec)
        return Presigned(url, headers)

    def presign_part(self, key: str, multipart_id: str, part_number: int, size: int) -> Presigned:
        url = self.url_signer.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "UploadId": multipart_id,
                "PartNumber": part_number,
                "ContentLength": size,
            },
            ExpiresIn=self.url_ttl_sec,
        )
        return Presigned(url, {})

    def presign_get(self, key: str) -> str:
        return self.url_signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_ttl_sec
        )

    def public_url(self, key: str) -> str | None:
        """The unsigned URL of ``key`` under ``public_base_url``, if the bucket is served publicly."""
        base = self.settings.public_base_url
        return f"{base.rstrip('/')}/{quote(key)}" if base else None

    # ---------------------------------------------------------------- multipart

    def create_multipart(self, key: str) -> str:
        return self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]

    def complete_multipart(self, key: str, multipart_id: str, parts: list[tuple[int, str]]) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=multipart_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        """Abort an upload and drop its parts; an upload that no longer exists is not an error."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=multipart_id)
        except Exception as e:
            if s3_error_code(e) not in ("NoSuchUpload", "404"):
                raise

    # ---------------------------------------------------------------- objects

    def head(self, key: str) -> ObjectHead | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except Exception as e:
            if s3_error_code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        checksum = response.get("ChecksumSHA1") or (response.get("Metadata") or {}).get(_VERIFIED_SHA1_METADATA)
        return ObjectHead(size=int(response["ContentLength"]), checksum_sha1=checksum)

    def sha1_of(self, key: str) -> tuple[str, int]:
        """Read the object and return its SHA-1 (hex) and size."""
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        digest = hashlib.sha1()
        size = 0
        try:
            while chunk := body.read(_HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        finally:
            body.close()
        return digest.hexdigest(), size

    def read_range(self, key: str, offset: int, size: int) -> bytes:
        """``size`` bytes of the object from ``offset`` (a small blob inside a pack)."""
        if size == 0:
            return b""
        response = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + size - 1}")
        with contextlib.closing(response["Body"]) as body:
            return body.read()

    def put_bytes(self, key: str, data: bytes, sha1_hex: str) -> None:
        """Write ``data`` (whose SHA-1 the caller computed) with one PUT; a store that checks checksums checks it."""
        extra = {"ChecksumSHA1": sha1_base64(sha1_hex)} if self.enforces_sha1 else {}
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (the embedded store starts empty)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except Exception as e:
            if s3_error_code(e) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except Exception as e:
            # Replicas starting together on a new bucket: one creates it, the others find it made.
            if s3_error_code(e) != "BucketAlreadyOwnedByYou":
                raise

    def probe_checksums(self) -> bool:
        """Find out what the store checks, with presigned URLs exactly as clients will use them: whether it
        refuses a PUT whose body does not match its ``x-amz-checksum-sha1``, a copy or a metadata header that the
        URL's signature does not cover, and (for :attr:`refuses_overwrites`) a PUT with ``If-None-Match: *``
        onto an existing object. Sets and returns :attr:`enforces_sha1`: only a store that refuses all three
        of the first is trusted to have checked what a single PUT wrote."""
        import requests

        expected = b"kachery-cloud checksum probe"
        sha1 = hashlib.sha1(expected).hexdigest()
        key = f"{self.settings.key_prefix}probes/{secrets.token_hex(8)}"
        other = f"{key}-copy"
        put = self.presign_put(key, len(expected), sha1, once=False, internal=True)
        try:
            wrong = requests.put(put.url, data=b"kachery-cloud checksum pr0be", headers=put.headers, timeout=30)
            right = requests.put(put.url, data=expected, headers=put.headers, timeout=30)
            head = self.head(key)
            copy = self.presign_put(other, 0, hashlib.sha1(b"").hexdigest(), once=False, internal=True)
            copy_source = f"{self.bucket}/{quote(key)}"
            copied = requests.put(copy.url, headers={**copy.headers, "x-amz-copy-source": copy_source}, timeout=30)
            unsigned = requests.put(
                put.url, data=expected, headers={**put.headers, "x-amz-meta-kachery-probe": "1"}, timeout=30
            )
            again = self.presign_put(key, len(expected), sha1, once=True, internal=True)
            overwrite = requests.put(again.url, data=expected, headers=again.headers, timeout=30)
            copy_made = self.head(other) is not None
        finally:
            self.delete(key)
            self.delete(other)
        if right.status_code != 200:
            raise RuntimeError(
                f"the object store refused a presigned PUT (HTTP {right.status_code}): {right.text[:300]}"
            )
        self.enforces_sha1 = (
            400 <= wrong.status_code < 500
            and head is not None
            and head.size == len(expected)
            and 400 <= copied.status_code < 500
            and not copy_made
            and 400 <= unsigned.status_code < 500
        )
        self.refuses_overwrites = overwrite.status_code == 412
        return self.enforces_sha1


def sha1_base64(sha1_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha1_hex)).decode("ascii")


def new_upload_id() -> str:
    return secrets.token_hex(16)


def s3_error_code(e: Exception) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (``NoSuchKey``, ``404`` …), else None."""
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return None
    return str(response.get("Error", {}).get("Code"))


def make_s3_client(settings: S3Settings, *, endpoint_url: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        # Checksums are asked for explicitly where they matter; botocore's default CRC32 would otherwise be
        # added to presigned URLs, where clients cannot know what to send.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=32,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key.get_secret_value(),
        config=config,
    )
