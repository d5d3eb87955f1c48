"""Uploads that are started and never completed are aborted by the server once they expire: their parts
leave the object store, their rows the database, and their URLs stop working."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import kachery_cloud as kcl
from kachery_cloud._connection import api_client, forget_clients
from kachery_cloud.api import blobs as blobs_api

from ..conftest import CLOUD_TEST_SETTINGS
from ..servers import RunningServer, start_server

MIB = 1 << 20


@pytest.fixture
def short_lived_uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    server = start_server(tmp_path / "server", settings={**CLOUD_TEST_SETTINGS, "upload_ttl_sec": 2})
    monkeypatch.setenv("KACHERY_CLOUD_API_URL", server.url)
    forget_clients()
    kcl.init(quiet=True)
    yield server
    server.stop()


def test_an_abandoned_multipart_upload_is_aborted_and_its_parts_removed(short_lived_uploads: RunningServer) -> None:
    data = os.urandom(11 * MIB)
    sha1 = hashlib.sha1(data).hexdigest()
    api = api_client()
    [plan] = blobs_api.need(api, None, [(sha1, len(data))])
    assert plan.method == "multipart"
    assert requests.put(plan.part_urls[1], data=data[: 5 * MIB], timeout=30).status_code == 200
    s3, bucket = short_lived_uploads.s3_client()
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads")  # the client went away here

    deadline = time.monotonic() + 30
    while s3.list_multipart_uploads(Bucket=bucket).get("Uploads") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    with pytest.raises(kcl.ServerError) as refused:
        blobs_api.upload_urls(api, plan, [2])
    assert refused.value.error_code == "upload_not_found"
    assert requests.put(plan.part_urls[2], data=data[5 * MIB : 10 * MIB], timeout=30).status_code == 404
    [result] = blobs_api.complete(api, [(plan, [(1, "x")])])
    assert result.status == "not_found"
    # Storing the content afterwards works as if nothing had happened.
    assert kcl.load_file(kcl.store_text(data.hex())) is not None
