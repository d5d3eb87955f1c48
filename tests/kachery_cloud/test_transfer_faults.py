"""The transfer layer against a local HTTP server that misbehaves on purpose, the way an object store or the
network sometimes does: a connection dropped half way, a 503, an expired URL (403)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from kachery_cloud.api.blobs import UploadPlan
from kachery_cloud.errors import IntegrityError
from kachery_cloud.transfer import download, store_http
from kachery_cloud.transfer.download import fetch_range, stream_blob
from kachery_cloud.transfer.upload import upload_files

BLOB = os.urandom(3 << 20)


class FlakyStore(BaseHTTPRequestHandler):
    """GET /drop: the first answer stops half way; /busy: a 503 first; /expired: always 403; /good: fine.
    PUT /busy: a 500 first. Every request is recorded."""

    requests: ClassVar[list[tuple[str, str, str | None]]] = []
    failed_once: ClassVar[set[str]] = set()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path, self.headers.get("Range")))
        if self.path == "/expired":
            self._error(403, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
            return
        if self.path == "/busy" and self.path not in self.failed_once:
            self.failed_once.add(self.path)
            self._error(503, "<Error><Code>SlowDown</Code></Error>")
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            end = self.headers["Range"].split("-")[1]
            stop = int(end) + 1 if end else len(BLOB)
            self.send_response(206)
        else:
            stop = len(BLOB)
            self.send_response(200)
        self.send_header("Content-Length", str(stop - start))
        self.end_headers()
        if self.path == "/drop" and self.path not in self.failed_once:
            self.failed_once.add(self.path)
            self.wfile.write(BLOB[start : start + (stop - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(BLOB[start:stop])

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append(("PUT", self.path, hashlib.sha1(body).hexdigest()))
        if self.path == "/busy" and "PUT" + self.path not in self.failed_once:
            self.failed_once.add("PUT" + self.path)
            self._error(500, "<Error><Code>InternalError</Code></Error>")
            return
        self.send_response(200)
        self.send_header("ETag", '"etag-of-part"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _error(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for module in (download, store_http):  # no waiting between attempts in tests
        monkeypatch.setattr(module, "pause", lambda attempt: None)
    FlakyStore.requests = []
    FlakyStore.failed_once = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyStore)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fixed(url: str) -> download.UrlSource:
    """A URL source that never refreshes."""
    return lambda refresh: url


def test_a_download_cut_off_half_way_resumes_from_the_last_byte(store: str) -> None:
    out = io.BytesIO()
    stream_blob(fixed(f"{store}/drop"), len(BLOB), out, "test")
    assert out.getvalue() == BLOB
    ranges = [r for method, path, r in FlakyStore.requests if method == "GET"]
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(ranges[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= len(BLOB) // 2  # only what had not arrived was asked for again


def test_a_busy_store_is_retried_and_a_range_fetches_only_the_range(store: str) -> None:
    out = io.BytesIO()
    stream_blob(fixed(f"{store}/busy"), len(BLOB), out, "test")
    assert out.getvalue() == BLOB and len(FlakyStore.requests) == 2
    assert fetch_range(fixed(f"{store}/good"), 10, 20, "test") == BLOB[10:20]
    assert FlakyStore.requests[-1] == ("GET", "/good", "bytes=10-19")


def test_an_expired_url_is_replaced_by_a_fresh_one(store: str) -> None:
    asked: list[bool] = []

    def url(refresh: bool) -> str:
        asked.append(refresh)
        return f"{store}/good" if refresh else f"{store}/expired"

    out = io.BytesIO()
    stream_blob(url, len(BLOB), out, "test")
    assert out.getvalue() == BLOB and asked == [False, True]


def test_a_store_that_sends_too_much_is_an_integrity_error(store: str) -> None:
    with pytest.raises(IntegrityError, match="more than"):
        stream_blob(fixed(f"{store}/good"), len(BLOB) - 1, io.BytesIO(), "test")


def test_a_failed_part_upload_is_sent_again(store: str, tmp_path: Path) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(BLOB)
    sha1 = hashlib.sha1(BLOB).hexdigest()
    part = 1 << 20
    plan = UploadPlan(
        sha1=sha1,
        size=len(BLOB),
        exists=False,
        upload_id="u1",
        method="multipart",
        part_size=part,
        num_parts=3,
        part_urls={1: f"{store}/good", 2: f"{store}/busy", 3: f"{store}/good"},
    )
    progress: list[int] = []
    [(_, parts)] = upload_files(None, [plan], {sha1: source}, progress.append)  # type: ignore[arg-type]
    assert parts == [(1, '"etag-of-part"'), (2, '"etag-of-part"'), (3, '"etag-of-part"')]
    puts = [(path, digest) for method, path, digest in FlakyStore.requests if method == "PUT"]
    assert len(puts) == 4 and puts.count(("/busy", hashlib.sha1(BLOB[part : 2 * part]).hexdigest())) == 2
    assert sum(progress) == len(BLOB)


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranged parallel downloads at test sizes: 3 MiB in twelve 256 KiB ranges, 4 in flight."""
    monkeypatch.setattr(download, "RANGE_BYTES", 256 << 10)
    monkeypatch.setattr(download, "PARALLEL_MIN_BYTES", 512 << 10)
    monkeypatch.setattr(download, "WINDOW", 4)
    monkeypatch.setattr(download, "MAX_WORKERS", 3)


@pytest.mark.parametrize("path", ["/good", "/drop", "/busy"])
def test_a_big_blob_comes_in_parallel_ranges_in_order(store: str, small_ranges: None, path: str) -> None:
    out = io.BytesIO()
    download.download_blob(fixed(f"{store}{path}"), len(BLOB), out, "test")
    assert out.getvalue() == BLOB
    ranges = sorted(
        (int(r.removeprefix("bytes=").split("-")[0]), int(r.split("-")[1]))
        for method, _, r in FlakyStore.requests
        if method == "GET" and r is not None
    )
    assert ranges[0][0] == 0 and ranges[-1][1] == len(BLOB) - 1
    assert len(ranges) == 12 + (path != "/good")  # each range once, plus the one that dropped or failed
    if path == "/drop":  # the dropped range was resumed from its last byte received, not fetched whole again
        starts = [start for start, _ in ranges]
        assert any(start % (256 << 10) for start in starts)


def test_a_big_blob_with_an_expired_url_gets_a_fresh_one(store: str, small_ranges: None) -> None:
    def url(refresh: bool) -> str:
        return f"{store}/good" if refresh else f"{store}/expired"

    out = io.BytesIO()
    download.download_blob(url, len(BLOB), out, "test")
    assert out.getvalue() == BLOB


def test_a_failed_range_stops_the_download_with_the_stores_error(store: str, small_ranges: None) -> None:
    with pytest.raises(store_http.StoreRequestError, match="403"):
        download.download_blob(fixed(f"{store}/expired"), len(BLOB), io.BytesIO(), "test")
