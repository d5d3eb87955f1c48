"""Item 1 of the security issue: the store does only what the server signed. A writer in its own project adds
headers nobody signed to presigned upload URLs (``x-amz-copy-source`` and friends, metadata, stored headers) to
copy another project's private blob, to record a hash whose bytes have another SHA-1, or to overwrite a blob a
colleague stored. The store refuses, or the completion records nothing and names no object the attacker could
not read; readers keep getting the right bytes. On the suite's two servers (embedded nanio + SQLite re-hashing
everything, SeaweedFS + PostgreSQL) and the embedded store as it runs by default, trusting its own SHA-1 check of
a single PUT: the path item 1's copy went through."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from sqlalchemy import text

import kachery_cloud as kcl
from kachery_cloud._connection import api_client
from kachery_cloud.api import blobs as blobs_api
from kachery_cloud.api.blobs import CompleteResult, UploadPlan

from ..conftest import CLOUD_TEST_SETTINGS
from ..servers import PostgresDatabases, RunningServer, free_port, start_server
from .attack_kit import KIB, MIB, SMALL_UPLOAD, Party, World, _party, admin, assert_not_findable, become, sha1_b64
from .conftest import Figure, Figures

SINGLE_PUT_MAX = CLOUD_TEST_SETTINGS["single_put_max_bytes"]
SHA1_HEX = re.compile(r"(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])")
REHASH = "nanio-sqlite"  # the one server that hands out no single PUT URL: it re-hashes everything


@pytest.fixture(scope="module", params=[REHASH, "nanio-checked-sqlite", "seaweedfs-postgresql"])
def cloud(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases
) -> Iterator[RunningServer]:
    """tests/conftest.py's ``cloud``, plus the embedded store with its default ``verify_uploads: auto``."""
    settings: dict[str, Any] = dict(CLOUD_TEST_SETTINGS)
    database_url = None
    if request.param == REHASH:
        settings["verify_uploads"] = "rehash"
    elif request.param == "seaweedfs-postgresql":
        settings["s3"] = request.getfixturevalue("seaweedfs").s3_settings(f"kc-{secrets.token_hex(4)}")
        database_url = postgres.create()
    directory = tmp_path_factory.mktemp(f"cloud-{request.param}")
    running = start_server(directory, database_url=database_url, settings=settings)
    yield running
    running.stop()


@dataclass(frozen=True)
class Target:
    """A private blob of the victim and its object key (the layout is public; a multipart upload's key is taken
    from the database here: the best case for the attacker)."""

    sha1: str
    size: int
    key: str
    data: bytes


@dataclass
class Scene:
    attacker: Party  # the write role in its own project, nothing in the victim's
    project: str
    targets: list[Target]


@dataclass
class Count:
    attempts: int = 0
    refused: int = 0  # 4xx from the store
    detected: int = 0  # taken by the store, refused by the completion
    outcomes: dict[str, str] = field(default_factory=dict)


def blob_rows(world: World, project: str, sha1: str) -> list[Any]:
    """The blob's rows in the server's database (read-only): its object key and who recorded it."""
    query = text("SELECT object_key, created_by_client_id FROM blobs WHERE project_id = :p AND sha1 = :s")
    with world.engine.connect() as conn:
        return list(conn.execute(query, {"p": project, "s": sha1}))


def object_key(world: World, project: str, sha1: str) -> str:
    [row] = blob_rows(world, project, sha1)
    return row.object_key or f"projects/{project}/sha1/{sha1[0:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"


def stored_bytes(world: World, key: str) -> bytes:
    return world.s3.get_object(Bucket=world.bucket, Key=key)["Body"].read()


def file_with(data: bytes) -> str:
    """A file holding ``data``, beside this process's client directory."""
    path = Path(os.environ["KACHERY_CLOUD_DIR"]).parent / f"blob-{secrets.token_hex(6)}.bin"
    path.write_bytes(data)
    return str(path)


def act(mp: pytest.MonkeyPatch, world: World, party: Party, project: str = "default") -> None:
    become(mp, world, party)
    mp.setenv("KACHERY_CLOUD_PROJECT", project)


def fresh_cache(mp: pytest.MonkeyPatch, world: World, party: Party, project: str = "default") -> None:
    """``party`` with an empty client directory: whatever it loads next is really downloaded."""
    directory = Path(os.environ["KACHERY_CLOUD_DIR"]).parent / f"cache-{party.name}-{secrets.token_hex(4)}"
    mp.setenv("KACHERY_CLOUD_DIR", str(directory))
    act(mp, world, party, project)


def b64_of_hex(sha1: str) -> str:
    return base64.b64encode(bytes.fromhex(sha1)).decode()


def ask(project: str, sha1: str, size: int) -> UploadPlan:
    [plan] = blobs_api.need(api_client(), project, [(sha1, size)])
    assert not plan.exists, plan
    return plan


def put(plan: UploadPlan, body: bytes, extra: dict[str, str], drop: str = "") -> requests.Response:
    """A PUT with ``plan``'s URL (its one part, for multipart) and its signed headers, plus ``extra``."""
    url, headers = (plan.url, dict(plan.headers)) if plan.method == "put" else (plan.part_urls[1], {})
    headers.pop(drop, None)
    return requests.put(url, data=body, headers={**headers, **extra}, timeout=60)


def complete(plan: UploadPlan, response: requests.Response | None) -> CompleteResult:
    etag = response.headers.get("ETag") if response is not None else None
    parts = None if plan.method == "put" else [(1, etag or '"0"')]
    [result] = blobs_api.complete(api_client(), [(plan, parts)])
    return result


def tells_nothing(result: CompleteResult, claimed_sha1: str, claimed_size: int, secret_sizes: list[int]) -> None:
    """A refused completion repeats what the attacker sent, and nothing about any object it could not read."""
    assert result.status != "stored", result
    assert set(SHA1_HEX.findall(result.message)) <= {claimed_sha1}, result
    numbers = set(re.findall(r"\d+", SHA1_HEX.sub("", result.message)))
    assert not {str(s) for s in secret_sizes if s != claimed_size} & numbers, result


def attack(count: Count, what: str, plan: UploadPlan, body: bytes, extra: dict[str, str],
           drop: str = "") -> requests.Response | None:  # fmt: skip
    """One hostile PUT: None if the store refused it (a 4xx), else its answer."""
    response = put(plan, body, extra, drop)
    count.attempts += 1
    code = re.search(r"<Code>([^<]*)</Code>", response.text)
    count.outcomes.setdefault(f"{plan.method}: {what}", f"{response.status_code} {code.group(1) if code else ''}")
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        count.refused += 1
        return None
    return response


def assert_not_recorded(world: World, mp: pytest.MonkeyPatch, party: Party, project: str, sha1s: list[str]) -> None:
    """None of ``sha1s`` is in ``project``, nor served to ``party`` from anywhere."""
    assert not [s for s in sha1s if blob_rows(world, project, s)]
    fresh_cache(mp, world, party, project)
    found, _ = blobs_api.find(api_client(), sha1s, project)
    assert not found, found
    assert [kcl.load_file(f"sha1://{s}") for s in sha1s] == [None] * len(sha1s)


def record(figures: Figures, item: str, world: World, count: Count, started: float, recorded: int = 0) -> None:
    details = {"store": world.store, "attempts": count.attempts, "refused by the store": count.refused,
               "refused by the completion": count.detected, "recorded": recorded,
               "outcomes": count.outcomes}  # fmt: skip
    figures.record(Figure(f"1 store headers: {item}", count.attempts, count.attempts, 0, recorded,
                          time.monotonic() - started, details))  # fmt: skip


@pytest.fixture(scope="module")
def scene(world: World, cloud: RunningServer) -> Iterator[Scene]:
    """The attacker and its project; the victim's private blobs: one sent inline, one single PUT (one part where
    everything is re-hashed), one multipart."""
    if (yaml.safe_load((cloud.data_dir / "settings.yaml").read_text()) or {}).get("verify_uploads") != "rehash":
        world.store = world.store.replace("nanio-", "nanio-checked-")  # three servers: told apart in the figures
    project = f"atk-{secrets.token_hex(3)}"
    admin(cloud, "create-project", project)
    attacker = _party(cloud, "attacker", f"attacker-{secrets.token_hex(3)}@example.org", project, "write")
    targets = []
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("KACHERY_")]:
            mp.delenv(name)
        mp.setenv("KACHERY_CLOUD_DIR", str(cloud.data_dir.parent / f"victim-{secrets.token_hex(3)}"))
        mp.setenv("KACHERY_CLOUD_QUIET", "1")
        act(mp, world, world.victim)
        # Sizes no message would mention by chance.
        for data in (b"private %d" % secrets.randbits(64), os.urandom(SMALL_UPLOAD + 37), os.urandom(MIB + 4099)):
            sha1 = kcl.store_file(file_with(data)).split("//")[1][:40]
            key = object_key(world, "default", sha1)
            assert stored_bytes(world, key) == data  # the attacker names the right object
            targets.append(Target(sha1, len(data), key, data))
    yield Scene(attacker, project, targets)


# ------------------------------------------------------------------------------------------------ the tests


def test_copy_through_an_upload_url_is_refused(scene: Scene, world: World, figures: Figures,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The attacker asks for URLs for the hash of each of the victim's blobs (its size, size 0 as the old leak
    needed, a part URL) and sends each with ``x-amz-copy-source`` naming the victim's object, alone and with the
    other copy and metadata headers. Refused; nothing recorded; the completion tells no size it was not told."""
    started, count = time.monotonic(), Count()
    act(monkeypatch, world, scene.attacker, scene.project)
    secret_sizes = [t.size for t in scene.targets]
    for target in scene.targets:
        source = f"{world.bucket}/{quote(target.key)}"
        variants = {
            "copy-source": {"x-amz-copy-source": source},
            "copy-source with a stamp": {"x-amz-copy-source": "/" + source, "x-amz-metadata-directive": "REPLACE",
                                         "x-amz-meta-kachery-sha1": b64_of_hex(target.sha1)},
            "copy-source-range": {"x-amz-copy-source": source, "x-amz-copy-source-range": f"bytes=0-{target.size - 1}"},
            "copy-source with tags, class, ACL": {"x-amz-copy-source": source, "x-amz-tagging-directive": "COPY",
                                                  "x-amz-storage-class": "STANDARD", "x-amz-acl": "public-read"},
            "copy-source-range alone": {"x-amz-copy-source-range": "bytes=0-0"},
        }  # fmt: skip
        for claimed in dict.fromkeys((target.size, 0, SINGLE_PUT_MAX + 1)):
            plan = ask(scene.project, target.sha1, claimed)
            if world.store != REHASH and claimed <= SINGLE_PUT_MAX:
                assert plan.method == "put", plan  # the path the copy of item 1 went through
            for what, headers in variants.items():
                # A body as long as the URL's signed Content-Length: only the headers are hostile.
                response = attack(count, what, plan, bytes(claimed), headers)
                if response is None:
                    continue
                tells_nothing(complete(plan, response), target.sha1, claimed, secret_sizes)
                count.detected += 1
                plan = ask(scene.project, target.sha1, claimed)
            tells_nothing(complete(plan, None), target.sha1, claimed, secret_sizes)
    assert_not_recorded(world, monkeypatch, scene.attacker, scene.project, [t.sha1 for t in scene.targets])
    record(figures, "copy of another project's blob through an upload URL", world, count, started)


UNSIGNED = {"x-amz-meta-kachery-sha1": "",  # the stamp of a checked SHA-1 (filled in per blob)
            "x-amz-tagging": "owner=victim", "x-amz-storage-class": "REDUCED_REDUNDANCY", "x-amz-acl": "public-read",
            "x-amz-website-redirect-location": "https://attacker.example/", "x-amz-server-side-encryption": "AES256",
            "x-amz-checksum-crc32": "AAAAAA==", "x-amz-object-lock-legal-hold": "ON"}  # fmt: skip
# Headers a store keeps with the object and serves back; the embedded store refuses them unsigned.
STORED = {"Content-Encoding": "gzip", "Content-Disposition": "attachment; filename=x.html",
          "Cache-Control": "max-age=1", "Content-Language": "fr", "Expires": "0"}  # fmt: skip


def test_unsigned_headers_on_upload_urls_are_refused(scene: Scene, world: World, figures: Figures,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The attacker's honest upload of its own blobs, single PUT and part, each with one header nobody signed:
    refused. The control: the same URL and bytes without it are taken and recorded (the URLs were good)."""
    started, count = time.monotonic(), Count()
    act(monkeypatch, world, scene.attacker, scene.project)
    headers = dict(UNSIGNED)
    if world.store != "seaweedfs-postgresql":
        headers.update(STORED)  # SeaweedFS keeps them: see test_an_unsigned_content_encoding_changes_no_read
    for size in (SMALL_UPLOAD + 5, SINGLE_PUT_MAX + 5):
        data = os.urandom(size)
        sha1 = hashlib.sha1(data).hexdigest()
        plan = ask(scene.project, sha1, size)
        for name, value in headers.items():
            taken = attack(count, name, plan, data, {name: value or b64_of_hex(sha1)})
            assert taken is None, f"{plan.method} with an unsigned {name}: taken"
        response = put(plan, data, {})
        assert response.status_code == 200, response.text
        assert complete(plan, response).status == "stored"
    record(figures, "unsigned x-amz and stored headers on upload URLs", world, count, started)


def test_a_repeated_query_parameter_is_refused(scene: Scene, world: World, figures: Figures,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A second X-Amz-SignedHeaders put in front of the real one, naming Content-Encoding: the guard read the
    first, nanio's signature check the last, so the header passed as signed. Refused on the embedded store."""
    started, count = time.monotonic(), Count()
    act(monkeypatch, world, scene.attacker, scene.project)
    for size in (SMALL_UPLOAD + 7, SINGLE_PUT_MAX + 7):
        data = os.urandom(size)
        plan = ask(scene.project, hashlib.sha1(data).hexdigest(), size)
        url, headers = (plan.url, dict(plan.headers)) if plan.method == "put" else (plan.part_urls[1], {})
        base, query = url.split("?", 1)
        forged = f"{base}?X-Amz-SignedHeaders=host%3Bcontent-encoding%3Bx-amz-meta-kachery-sha1&{query}"
        headers.update({"Content-Encoding": "gzip", "x-amz-meta-kachery-sha1": "forged"})
        response = requests.put(forged, data=data, headers=headers, timeout=60)
        count.attempts += 1
        count.outcomes[f"{plan.method}: repeated X-Amz-SignedHeaders"] = str(response.status_code)
        assert response.status_code < 500, response.text[:300]
        if response.status_code >= 400:
            count.refused += 1
        elif world.store != "seaweedfs-postgresql":
            raise AssertionError(f"{plan.method}: the embedded store took headers it only thought were signed")
    record(figures, "a repeated query parameter on an upload URL", world, count, started)


def test_bytes_that_are_not_the_hash_are_never_recorded(scene: Scene, world: World, figures: Figures,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Other bytes through a URL for hash H: with the URL's headers, with the checksum of what is sent, with a
    forged stamp, with a matching Content-MD5. Refused by the store or by the completion; H is never recorded."""
    started, count = time.monotonic(), Count()
    act(monkeypatch, world, scene.attacker, scene.project)
    claimed_sha1s = []
    for size in (SMALL_UPLOAD + 9, SINGLE_PUT_MAX + 9):
        claimed, sent = os.urandom(size), os.urandom(size)
        sha1 = hashlib.sha1(claimed).hexdigest()
        claimed_sha1s.append(sha1)
        md5 = base64.b64encode(hashlib.md5(sent).digest()).decode()
        variants = {"the URL's headers": {}, "the sent bytes' checksum": {"x-amz-checksum-sha1": sha1_b64(sent)},
                    "a forged stamp": {"x-amz-meta-kachery-sha1": b64_of_hex(sha1)},
                    "their Content-MD5": {"Content-MD5": md5}}  # fmt: skip
        plan = ask(scene.project, sha1, size)
        for what, extra in variants.items():
            response = attack(count, what, plan, sent, extra)
            if response is None:
                continue
            result = complete(plan, response)
            assert result.status == "mismatch", result
            tells_nothing(result, sha1, size, [])
            count.detected += 1
            plan = ask(scene.project, sha1, size)
        tells_nothing(complete(plan, None), sha1, size, [])
    assert_not_recorded(world, monkeypatch, scene.attacker, scene.project, claimed_sha1s)
    assert_not_findable(world, monkeypatch, claimed_sha1s)  # nor to the victim, owner of the attacker's project
    record(figures, "bytes whose SHA-1 is not the claimed hash", world, count, started)


def test_a_stored_blob_cannot_be_overwritten_through_an_old_url(scene: Scene, world: World, figures: Figures,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A colleague (the writer of the victim's project) asks for a URL for H before the victim stores H, then
    sends other bytes, a copy of its own blob, or drops the signed If-None-Match. Refused (412, 403, 400), or
    taken into its own upload and refused at completion; every reader still gets the victim's bytes."""
    started, count = time.monotonic(), Count()
    data, other = os.urandom(SMALL_UPLOAD + 11), os.urandom(SMALL_UPLOAD + 11)
    sha1 = hashlib.sha1(data).hexdigest()
    act(monkeypatch, world, world.writer)
    own_sha1 = kcl.store_file(file_with(other)).split("//")[1][:40]
    copy = {"x-amz-copy-source": f"{world.bucket}/{quote(object_key(world, 'default', own_sha1))}"}
    variants = [
        ("the same bytes again", data, {}, ""),
        ("other bytes", other, {}, ""),
        ("other bytes with their checksum", other, {"x-amz-checksum-sha1": sha1_b64(other)}, ""),
        ("a copy of the colleague's blob", bytes(len(data)), copy, ""),
        ("a copy with a forged stamp", bytes(len(data)),
         {**copy, "x-amz-metadata-directive": "REPLACE", "x-amz-meta-kachery-sha1": b64_of_hex(sha1)}, ""),
        ("the same bytes without If-None-Match", data, {}, "If-None-Match"),
    ]  # fmt: skip
    olds = [ask("default", sha1, len(data)) for _ in variants]  # each attempt its own URL, all asked for before
    act(monkeypatch, world, world.victim)
    uri = kcl.store_file(file_with(data))
    key = object_key(world, "default", sha1)
    act(monkeypatch, world, world.writer)
    for old, (what, body, extra, drop) in zip(olds, variants, strict=True):
        assert old.method == ("multipart" if world.store == REHASH else "put"), old
        response = attack(count, what, old, body, extra, drop)
        if response is not None:  # only a part of the colleague's own upload (asserted): the completion decides
            assert world.store == REHASH, f"{what}: taken onto the victim's object"
            result = complete(old, response)
            assert result.status == ("stored" if body == data else "mismatch"), result  # stored: already there
            count.detected += body != data
        elif world.store != REHASH:  # completing it changes nothing either: the blob is there, checked
            assert complete(old, None).status == "stored"
    assert stored_bytes(world, key) == data
    assert [r.created_by_client_id for r in blob_rows(world, "default", sha1)] == [world.victim.client_id]
    for reader in (world.victim, world.reader, world.writer):
        fresh_cache(monkeypatch, world, reader)
        assert kcl.load_bytes(uri) == data, reader.name  # ranges are not hashed: they must be right at the store
        assert kcl.load_bytes(uri, 1000, 5000) == data[1000:5000], reader.name
        assert Path(kcl.load_file(uri) or "").read_bytes() == data, reader.name
    record(figures, "overwrite of a stored blob through an old URL", world, count, started)


def test_unsigned_headers_on_download_urls_change_nothing(scene: Scene, world: World, figures: Figures,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A reader's GET URL with headers nobody signed: refused, or the object's bytes (a range: that range).
    Other methods on it are refused. Documented per header in the figure."""
    started, count = time.monotonic(), Count()
    target, other = scene.targets[1], scene.targets[0]
    act(monkeypatch, world, world.reader)
    found, _ = blobs_api.find(api_client(), [target.sha1], "default")
    url = found[target.sha1].url
    for name, value in {"Range": "bytes=10-99", "x-amz-copy-source": f"{world.bucket}/{quote(other.key)}",
                        "x-amz-checksum-mode": "ENABLED", "x-amz-server-side-encryption-customer-algorithm": "AES256",
                        "x-amz-request-payer": "requester", "x-amz-expected-bucket-owner": "123456789012",
                        "Accept-Encoding": "gzip", "If-None-Match": "*", "": ""}.items():  # fmt: skip
        response = requests.get(url, headers={name: value} if name else {}, timeout=60)
        count.attempts += 1
        count.outcomes[f"GET {name or 'as signed'}"] = str(response.status_code)
        if response.status_code in (200, 206):  # 206: only for the Range asked for
            assert response.content == (target.data[10:100] if name == "Range" else target.data), name
        else:  # 304 (If-None-Match) or refused
            assert name and 300 <= response.status_code < 500, (name, response.status_code, response.text[:300])
            count.refused += 1
    for method in ("PUT", "POST", "DELETE"):
        response = requests.request(method, url, data=b"x", timeout=60)
        count.attempts += 1
        count.outcomes[method] = str(response.status_code)
        assert 400 <= response.status_code < 500, (method, response.status_code)
        count.refused += 1
    assert stored_bytes(world, target.key) == target.data
    fresh_cache(monkeypatch, world, world.reader)
    assert kcl.load_bytes(f"sha1://{target.sha1}") == target.data
    record(figures, "unsigned headers on download URLs", world, count, started)


def test_an_unsigned_content_encoding_changes_no_read(scene: Scene, world: World, figures: Figures,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A blob whose bytes are a gzip stream (decoding to as many bytes), sent by the attacker with an unsigned
    ``Content-Encoding: gzip``: refused, or readers still get its bytes (load_bytes reads ranges without hashing)."""
    # SeaweedFS keeps the header (the embedded store refuses it); load_bytes decoded it until it read raw bodies.
    started, count = time.monotonic(), Count()
    decoded = b"not the blob " * (16 * KIB)
    data = gzip.compress(decoded)
    data += os.urandom(len(decoded) - len(data))  # trailing junk that decoders drop: same length either way
    sha1 = hashlib.sha1(data).hexdigest()
    act(monkeypatch, world, scene.attacker, scene.project)
    plan = ask(scene.project, sha1, len(data))
    response = attack(count, "Content-Encoding", plan, data, {"Content-Encoding": "gzip"})
    response = response if response is not None else put(plan, data, {})  # refused: the honest upload
    assert complete(plan, response).status == "stored"
    fresh_cache(monkeypatch, world, scene.attacker, scene.project)
    uri = f"sha1://{sha1}"
    assert Path(kcl.load_file(uri) or "").read_bytes() == data  # whole downloads are raw and hashed
    fresh_cache(monkeypatch, world, scene.attacker, scene.project)
    got = kcl.load_bytes(uri)
    record(figures, "unsigned Content-Encoding on an upload URL", world, count, started, recorded=int(got != data))
    assert got == data, f"load_bytes returned {len(got or b'')} other bytes (the gzip stream decoded)"
    assert kcl.load_bytes(uri, 7, 99) == data[7:99]  # a range of it too (decoding it failed, then was retried)


def test_normal_store_and_load_still_work(scene: Scene, world: World, figures: Figures,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """After the attacks, on the same server: blobs of every kind stored by members, loaded by others."""
    started, count = time.monotonic(), Count()
    for party, project, reader in ((world.writer, "default", world.reader), (scene.attacker, scene.project, None)):
        act(monkeypatch, world, party, project)
        # Inline, single PUT (a part where everything is re-hashed), multipart.
        blobs = [os.urandom(size) for size in (3 * KIB, SMALL_UPLOAD + 13, MIB + 13)]
        uris = [kcl.store_file(file_with(data)) for data in blobs]
        fresh_cache(monkeypatch, world, reader or party, project)
        for uri, data in zip(uris, blobs, strict=True):
            count.attempts += 1
            assert kcl.load_bytes(uri, 7, 99) == data[7:99], uri
            assert Path(kcl.load_file(uri) or "").read_bytes() == data, uri
    record(figures, "normal store and load after the attacks", world, count, started)


def test_the_attacks_work_on_a_store_that_obeys_unsigned_headers(tmp_path: Path, figures: Figures) -> None:
    """The control of the refusals above: plain nanio (no StoreGuard) does copy through a presigned PUT URL
    signed exactly as the server signs them, and keeps an unsigned stamp; the server's start-up probe notices and
    would not trust it."""
    from api_server.settings import S3Settings
    from api_server.storage import Storage

    started, port = time.monotonic(), free_port()
    env = {**os.environ, "NANIO_ACCESS_KEY": "control-ak", "NANIO_SECRET_KEY": "control-secret-key"}
    command = [sys.executable, "-m", "nanio", "serve", "--data-dir", str(tmp_path), "--host", "127.0.0.1",
               "--port", str(port), "--no-access-log"]  # fmt: skip
    with open(tmp_path.parent / "nanio-control.log", "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        storage = Storage(S3Settings(endpoint_url=f"http://127.0.0.1:{port}", bucket="control",
                                     access_key_id="control-ak", secret_access_key="control-secret-key"))  # fmt: skip
        for _ in range(300):
            with contextlib.suppress(Exception):
                storage.ensure_bucket()
                break
            assert process.poll() is None, "nanio exited"
            time.sleep(0.1)
        secret, key = os.urandom(1000), "projects/attacker/blob"
        storage.put_bytes("projects/victim/blob", secret, hashlib.sha1(secret).hexdigest())
        url = storage.presign_put(key, 1000, hashlib.sha1(secret).hexdigest(), once=False)
        copy = {**url.headers, "x-amz-copy-source": "control/projects/victim/blob"}
        assert requests.put(url.url, data=bytes(1000), headers=copy, timeout=30).status_code == 200
        assert storage.client.get_object(Bucket="control", Key=key)["Body"].read() == secret
        stamp = {**url.headers, "x-amz-meta-kachery-sha1": "forged"}
        assert requests.put(url.url, data=secret, headers=stamp, timeout=30).status_code == 200
        assert storage.client.head_object(Bucket="control", Key=key)["Metadata"].get("kachery-sha1") == "forged"
        assert storage.probe_checksums() is False
    finally:
        process.terminate()
        process.wait(timeout=30)
    details = {"copy through a PUT URL": "200, the victim's bytes", "unsigned stamp": "200, kept", "probe": "untrusted"}
    figures.record(Figure("1 store headers: control, plain nanio obeys unsigned headers", 2, 2, 0, 0,
                          time.monotonic() - started, details))  # fmt: skip
