"""Store and load through a real API server and a real object store: the embedded nanio (the server told to
re-hash uploads) with SQLite, and SeaweedFS (which checks x-amz-checksum-sha1 itself) with PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

import kachery_cloud as kcl
from kachery_cloud import fetching
from kachery_cloud._connection import api_client
from kachery_cloud._progress import ProgressBar
from kachery_cloud.api import blobs as blobs_api
from kachery_cloud.api.blobs import FoundBlob
from kachery_cloud.config import load_config
from kachery_cloud.local import LocalDirectory
from kachery_cloud.transfer import upload as upload_module
from kachery_cloud.transfer.upload import upload_files

from ..helpers import act_as, bytes_read_by_this_process, switch_client
from ..servers import RunningServer, clean_env

MIB = 1 << 20


def usage(server: RunningServer, project: str = "default") -> dict:
    report = server.settled_usage(project)
    totals = {key: sum(day[key] for day in report["days"]) for key in ("requests", "bytes_in", "bytes_out")}
    return {**report, **totals}


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def test_every_store_function_round_trips_to_a_fresh_client(
    cloud_client: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    big = random_file(tmp_path / "big.bin", 12 * MIB + 3)  # multipart: 3 parts of 5 MiB
    small = tmp_path / "small.txt"
    small.write_text("small content")
    many = [tmp_path / f"many{i}.txt" for i in range(25)]
    for i, path in enumerate(many):
        path.write_text(f"file number {i}")
    array = np.arange(1000, dtype=np.float32).reshape(10, 100)

    uris = {
        "big": kcl.store_file(big, label="big.bin"),
        "small": kcl.store_file(str(small), cache_locally=True),
        "text": kcl.store_text("some text", label="t.txt"),
        "empty": kcl.store_text(""),
        "json": kcl.store_json({"b": [1, 2.5], "a": None}),
        "npy": kcl.store_npy(array),
        "pkl": kcl.store_pkl({"array": array, "name": "x"}),
    }
    many_uris = kcl.store_files(many, labels=[p.name for p in many])
    # The URIs name the content's SHA-1, exactly as the local variants do.
    assert uris["text"] == f"sha1://{hashlib.sha1(b'some text').hexdigest()}?label=t.txt"
    assert uris["json"] == "sha1://" + hashlib.sha1(b'{"a":null,"b":[1,2.5]}').hexdigest()
    assert many_uris[3] == f"sha1://{hashlib.sha1(b'file number 3').hexdigest()}?label=many3.txt"
    assert uris["big"].endswith("?label=big.bin")

    switch_client(monkeypatch, tmp_path / "second-machine")
    assert kcl.load_file(uris["big"], local_only=True) is None
    info = kcl.load_file_info(uris["big"])
    assert info is not None and info["size"] == big.stat().st_size and info["local_path"] is None
    assert info["project_id"] == "default"
    assert kcl.load_bytes(uris["big"], 5 * MIB - 10, 5 * MIB + 10) == big.read_bytes()[5 * MIB - 10 : 5 * MIB + 10]
    assert kcl.load_file(uris["big"], local_only=True) is None  # a range read caches nothing
    path = kcl.load_file(uris["big"])
    assert path is not None and Path(path).read_bytes() == big.read_bytes()
    assert kcl.load_file_info(uris["big"])["local_path"] == path
    assert kcl.load_text(uris["text"]) == "some text"
    assert kcl.load_text(uris["empty"]) == ""
    assert kcl.load_json(uris["json"]) == {"a": None, "b": [1, 2.5]}
    np.testing.assert_array_equal(kcl.load_npy(uris["npy"]), array)
    loaded = kcl.load_pkl(uris["pkl"])
    assert loaded["name"] == "x" and np.array_equal(loaded["array"], array)
    dest = tmp_path / "copy.txt"
    assert kcl.load_file(uris["small"], dest=dest) == str(dest) and dest.read_text() == "small content"
    paths = kcl.load_files(many_uris)
    assert [Path(p).read_text() for p in paths] == [f"file number {i}" for i in range(25)]
    capfd.readouterr()
    kcl.cat_file(uris["small"])
    assert capfd.readouterr().out == "small content"
    absent = "sha1://" + hashlib.sha1(b"never stored").hexdigest()
    assert kcl.load_file(absent) is None and kcl.load_text(absent) is None and kcl.load_file_info(absent) is None
    assert kcl.load_files([absent, uris["text"]])[0] is None
    with pytest.raises(kcl.NotFoundError, match="any project this client can read"):
        kcl.cat_file(absent)


def test_storing_the_same_50_mib_again_sends_no_bytes(
    cloud_client: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_file = random_file(tmp_path / "data.bin", 50 * MIB)
    before = usage(cloud_client)
    uri = kcl.store_file(data_file)
    after_first = usage(cloud_client)
    assert after_first["bytes_in"] - before["bytes_in"] == 50 * MIB
    read_before = bytes_read_by_this_process()
    assert kcl.store_file(data_file) == uri  # the hash memo: not even read again
    assert bytes_read_by_this_process() - read_before < 1 * MIB
    # A second machine with the same file hashes it, asks, and sends nothing.
    switch_client(monkeypatch, tmp_path / "second-machine")
    assert kcl.store_file(data_file) == uri
    after = usage(cloud_client)
    assert after["bytes_in"] == after_first["bytes_in"]
    assert after["requests"] > after_first["requests"]  # it did ask the server


def test_a_multipart_upload_fetches_part_urls_in_batches(cloud_client: RunningServer, tmp_path: Path) -> None:
    data_file = random_file(tmp_path / "parts.bin", 16 * MIB + 1)
    data = data_file.read_bytes()
    sha1 = hashlib.sha1(data).hexdigest()
    api = api_client()
    [plan] = blobs_api.need(api, None, [(sha1, len(data))])
    assert plan.method == "multipart" and plan.num_parts == 4 and plan.part_size == 5 * MIB
    plan.part_urls.clear()  # as for a blob with more parts than the first answer carries
    sent = upload_files(api, [plan], {sha1: data_file}, lambda n: None)
    assert [n for n, _etag in sent[0][1]] == [1, 2, 3, 4]
    assert [r.status for r in blobs_api.complete(api, sent)] == ["stored"]
    found, _ = blobs_api.find(api, [sha1], None)
    assert requests.get(found[sha1].url, timeout=30).content == data


def test_completing_one_upload_twice_at_once_keeps_the_blob(cloud_client: RunningServer) -> None:
    data = os.urandom(12 * MIB)
    sha1 = hashlib.sha1(data).hexdigest()
    api = api_client()
    [plan] = blobs_api.need(api, None, [(sha1, len(data))])
    parts = []
    for n in range(1, plan.num_parts + 1):
        start, length = plan.part_range(n)
        response = requests.put(plan.part_urls[n], data=data[start : start + length], timeout=30)
        parts.append((n, response.headers["ETag"]))
    # A retry racing the first attempt (and the same id twice in one batch) must not delete the stored object.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: blobs_api.complete(api, [(plan, parts), (plan, parts)]), range(2)))
    statuses = [result.status for answer in answers for result in answer]
    assert "stored" in statuses and set(statuses) <= {"stored", "not_found"}
    found, _ = blobs_api.find(api, [sha1], None)
    assert requests.get(found[sha1].url, timeout=30).content == data


def test_a_put_whose_first_answer_was_lost_is_not_a_failure(
    cloud_client: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the store honours If-None-Match: * (signed into the PUT URL: SeaweedFS here, and the embedded store
    unless told to re-hash), a retry after a lost answer, or a colleague storing the same blob first, gets 412:
    the object is there, and the completion still checks it."""
    source = random_file(tmp_path / "one.bin", 1 * MIB)
    sha1 = hashlib.sha1(source.read_bytes()).hexdigest()
    real_put = upload_module._Sender._put
    first_answers: list[int] = []

    def put_twice(sender: Any, plan: Any, part_number: int, data: memoryview, path: Path) -> str:
        headers = plan.headers if part_number == 0 else {}
        url = plan.url if part_number == 0 else plan.part_urls[part_number]
        first_answers.append(requests.put(url, data=bytes(data), headers=headers, timeout=30).status_code)
        return real_put(sender, plan, part_number, data, path)

    monkeypatch.setattr(upload_module._Sender, "_put", put_twice)
    uri = kcl.store_file(source)
    assert first_answers == [200]
    switch_client(monkeypatch, tmp_path / "reader")
    assert kcl.load_bytes(uri) == source.read_bytes()
    found, _ = blobs_api.find(api_client(), [sha1], None)
    assert found[sha1].size == source.stat().st_size


def test_content_that_does_not_match_its_hash_is_never_served(
    cloud_client: RunningServer, request: pytest.FixtureRequest
) -> None:
    api = api_client()
    store_checks_sha1 = request.node.callspec.params["cloud"] == "seaweedfs-postgresql"
    claimed_sha1s = []
    for size in (1000, 6 * MIB):  # a single PUT on SeaweedFS (it checks the checksum), parts everywhere else
        claimed = os.urandom(size)
        sha1 = hashlib.sha1(claimed).hexdigest()
        claimed_sha1s.append(sha1)
        other = os.urandom(size)
        [plan] = blobs_api.need(api, None, [(sha1, size)])
        assert plan.method == ("put" if store_checks_sha1 and size <= 1 * MIB else "multipart")
        parts = None
        if plan.method == "put":
            refused = requests.put(plan.url, data=other, headers=plan.headers, timeout=30)
            assert refused.status_code == 400 and "BadDigest" in refused.text
        else:
            parts = []
            for n in range(1, plan.num_parts + 1):
                start, length = plan.part_range(n)
                response = requests.put(plan.part_urls[n], data=other[start : start + length], timeout=30)
                assert response.status_code == 200
                parts.append((n, response.headers["ETag"]))
        [result] = blobs_api.complete(api, [(plan, parts)])
        assert result.status == ("not_uploaded" if plan.method == "put" else "mismatch")
        found, _ = blobs_api.find(api, [sha1], None)
        assert sha1 not in found
        assert not blobs_api.need(api, None, [(sha1, size)])[0].exists
    s3, bucket = cloud_client.s3_client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="projects/default/").get("Contents", [])]
    assert not any(sha1 in key for key in keys for sha1 in claimed_sha1s)  # the wrong bytes were deleted


def test_tampered_and_expired_urls_are_refused_by_the_store_and_refreshed_by_the_client(
    cloud_client: RunningServer, tmp_path: Path
) -> None:
    payload = os.urandom(2 * MIB)
    uri = kcl.store_text(payload.hex())
    sha1 = uri.split("//")[1]
    api = api_client()
    found, _ = blobs_api.find(api, [sha1], None)
    good = found[sha1].url
    s3, bucket = cloud_client.s3_client()
    key = s3.list_objects_v2(Bucket=bucket, Prefix=f"projects/default/sha1/{sha1[:2]}/")["Contents"][0]["Key"]
    expired = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=1)
    tampered = good.replace("X-Amz-Signature=", "X-Amz-Signature=00")
    import time

    time.sleep(2)
    for name, bad in (("expired", expired), ("tampered", tampered)):
        assert requests.get(bad, timeout=30).status_code == 403
        # A download handed the bad URL asks the server for a fresh one and completes.
        local = LocalDirectory(tmp_path / name)
        blob = FoundBlob(sha1, len(payload) * 2, "default", bad)
        path = fetching._download(load_config(), local, blob, ProgressBar(blob.size, "", enabled=False))
        assert path.read_bytes() == payload.hex().encode()

    # An upload whose URL was tampered with gets a fresh one from the server.
    data_file = random_file(tmp_path / "up.bin", 7 * MIB)
    sha1 = hashlib.sha1(data_file.read_bytes()).hexdigest()
    [plan] = blobs_api.need(api, None, [(sha1, 7 * MIB)])
    plan.part_urls = {n: u.replace("X-Amz-Signature=", "X-Amz-Signature=00") for n, u in plan.part_urls.items()}
    sent = upload_files(api, [plan], {sha1: data_file}, lambda n: None)
    assert [r.status for r in blobs_api.complete(api, sent)] == ["stored"]


def test_writing_needs_write_membership_and_reading_needs_read_access(
    cloud_client: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = cloud_client
    private_uri = kcl.store_text("private lab data")
    public_project = f"open-{secrets.token_hex(3)}"
    server.admin("create-project", public_project, "--public")
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", public_project)
    public_uri = kcl.store_json({"published": True})
    monkeypatch.delenv("KACHERY_CLOUD_PROJECT")

    # An outsider: no membership in "default".
    switch_client(monkeypatch, tmp_path / "outsider", register=False)
    act_as(server, monkeypatch, f"outsider-{secrets.token_hex(3)}@example.org")
    assert kcl.load_text(private_uri) is None
    with pytest.raises(kcl.NotFoundError):
        kcl.load_bytes(private_uri, 0, 3)
    assert kcl.load_json(public_uri) == {"published": True}
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", "default")
    with pytest.raises(kcl.ServerError, match="project default does not exist, or is private to its members"):
        kcl.store_text("intruder")
    # A reader of "default" can load but not store.
    reader = f"reader-{secrets.token_hex(3)}@example.org"
    act_as(server, monkeypatch, reader)
    server.admin("add-member", "default", reader, "--role", "read")
    assert kcl.load_text(private_uri) == "private lab data"
    with pytest.raises(kcl.PermissionDeniedError, match="needs 'write'"):
        kcl.store_text("reader's write")
    server.admin("add-member", "default", reader, "--role", "write")
    assert kcl.load_text(kcl.store_text("a writer now")) == "a writer now"

    # Ephemeral: no key, public projects only, every write refused before anything happens.
    monkeypatch.delenv("KACHERY_CLOUD_CLIENT_ID")
    monkeypatch.delenv("KACHERY_CLOUD_PRIVATE_KEY")
    switch_client(monkeypatch, tmp_path / "ephemeral", register=False)
    monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "1")
    assert kcl.load_json(public_uri) == {"published": True}
    assert kcl.load_text(private_uri) is None
    with pytest.raises(kcl.NotFoundError, match="ephemeral mode: only public projects"):
        kcl.cat_file(private_uri)
    for store in (lambda: kcl.store_text("x"), lambda: kcl.store_json(1), lambda: kcl.store_file(__file__)):
        with pytest.raises(kcl.EphemeralModeError, match="ephemeral mode"):
            store()
    assert not (tmp_path / "ephemeral" / "private.pem").exists()


def test_a_project_over_its_quota_refuses_with_a_clear_error(
    cloud_client: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = f"small-{secrets.token_hex(3)}"
    cloud_client.admin("create-project", project)
    cloud_client.admin("set-quota", project, "3M")
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", project)
    kcl.store_file(random_file(tmp_path / "a.bin", 2 * MIB))
    with pytest.raises(kcl.QuotaExceededError, match=r"over its quota of 3.0 MiB \(2.0 MiB used\)"):
        kcl.store_file(random_file(tmp_path / "b.bin", 2 * MIB))
    kcl.store_text("still fits")
    assert usage(cloud_client, project)["stored_bytes"] == 2 * MIB + len("still fits")


def test_small_blobs_travel_inside_one_request_and_are_verified_by_the_server(
    cloud_client: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [random_file(tmp_path / f"small-{i}.bin", i * 2000) for i in range(30)]  # the first one is empty
    big = random_file(tmp_path / "big.bin", blobs_api.INLINE_MAX_BYTES + 1)
    before = usage(cloud_client)
    uris = kcl.store_files([*files, big])
    after = usage(cloud_client)
    assert after["requests"] - before["requests"] == 1 + 2  # one inline request; need and complete for the big one
    assert after["bytes_in"] - before["bytes_in"] == sum(f.stat().st_size for f in [*files, big])
    kcl.store_files(files)  # again: the server has them and writes nothing
    assert usage(cloud_client)["bytes_in"] == after["bytes_in"]
    switch_client(monkeypatch, tmp_path / "reader")
    # Stored together as one pack; each one alone is a range of it, and load_files gets them in one GET.
    assert kcl.load_bytes(uris[5], 2, 10) == files[5].read_bytes()[2:10]
    assert Path(kcl.load_file(uris[7]) or "").read_bytes() == files[7].read_bytes()
    assert Path(kcl.load_file(uris[0]) or "").read_bytes() == b""
    assert [Path(p).read_bytes() for p in kcl.load_files(uris)] == [f.read_bytes() for f in [*files, big]]

    api = api_client()
    claimed = hashlib.sha1(b"what the client claims").hexdigest()
    refused = blobs_api.store_inline(api, None, [(claimed, b"other bytes")])
    assert "the bytes sent have SHA-1" in refused[claimed]
    assert blobs_api.find(api, [claimed], None)[0] == {}
    too_big = os.urandom(blobs_api.INLINE_MAX_BYTES + 1)
    with pytest.raises(kcl.ServerError, match="at most 65536 bytes"):
        blobs_api.store_inline(api, None, [(hashlib.sha1(too_big).hexdigest(), too_big)])

    project = f"tiny-{secrets.token_hex(3)}"
    cloud_client.admin("create-project", project)
    cloud_client.admin("set-quota", project, "100K")
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", project)
    kcl.store_text("x" * 60_000)
    with pytest.raises(kcl.QuotaExceededError, match="over its quota"):
        kcl.store_text("y" * 60_000)


def test_load_files_asks_for_and_fetches_a_chunk_at_a_time(
    cloud_client: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading many files holds the server's answers for one chunk at a time (bounded memory at any count)."""
    files = [random_file(tmp_path / f"chunk-{i}.bin", 100 + i) for i in range(25)]
    uris = kcl.store_files(files)
    switch_client(monkeypatch, tmp_path / "reader")
    monkeypatch.setattr(fetching, "FETCH_CHUNK", 10)
    asked: list[int] = []
    real_find = blobs_api.find

    def counting_find(api: Any, sha1s: list[str], project: str | None) -> Any:
        asked.append(len(sha1s))
        return real_find(api, sha1s, project)

    monkeypatch.setattr(blobs_api, "find", counting_find)
    loaded = kcl.load_files([*uris, uris[0]])  # a URI asked for twice is fetched once
    assert [Path(p or "").read_bytes() for p in loaded] == [f.read_bytes() for f in [*files, files[0]]]
    assert asked == [10, 10, 5]


def test_a_tampered_pack_is_refused_blob_by_blob(
    cloud_client: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [random_file(tmp_path / f"p-{i}.bin", 5000) for i in range(4)]
    uris = kcl.store_files(files)
    s3, bucket = cloud_client.s3_client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="projects/default/packs/")["Contents"]]
    [key] = [k for k in keys if s3.head_object(Bucket=bucket, Key=k)["ContentLength"] == 4 * 5000]
    pack = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert bytes(pack[5000:10000]) == files[1].read_bytes()  # the blobs, one after the other
    pack[7000] ^= 0xFF  # the second file's bytes change in the store
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(pack))
    switch_client(monkeypatch, tmp_path / "reader")
    with pytest.raises(kcl.IntegrityError, match="nothing was cached"):
        kcl.load_files(uris)
    with pytest.raises(kcl.IntegrityError):
        kcl.load_file(uris[1])
    assert Path(kcl.load_file(uris[2]) or "").read_bytes() == files[2].read_bytes()
    local = LocalDirectory(load_config().dir)
    assert local.blobs.find(uris[1].split("//")[1].split("?")[0]) is None


def test_several_processes_loading_one_uri_download_it_once(cloud_client: RunningServer, tmp_path: Path) -> None:
    data_file = random_file(tmp_path / "shared.bin", 20 * MIB)
    uri = kcl.store_file(data_file)
    shared_dir = tmp_path / "shared-client"
    env = clean_env(KACHERY_CLOUD_DIR=str(shared_dir), KACHERY_CLOUD_API_URL=cloud_client.url, KACHERY_CLOUD_QUIET="1")
    subprocess.run([sys.executable, "-m", "kachery_cloud", "init"], env=env, check=True, capture_output=True)
    before = usage(cloud_client)["bytes_out"]
    code = "import sys, kachery_cloud as kcl; print(kcl.load_file(sys.argv[1]))"
    loaders = [
        subprocess.Popen([sys.executable, "-c", code, uri], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    paths = {loader.communicate(timeout=120)[0].strip() for loader in loaders}
    assert all(loader.returncode == 0 for loader in loaders)
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == data_file.read_bytes()
    assert usage(cloud_client)["bytes_out"] - before == 20 * MIB  # one download, not four


def test_cli_store_load_cat_and_info_reach_the_server(cloud_client: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("from the command line\n")
    env = clean_env(
        KACHERY_CLOUD_DIR=os.environ["KACHERY_CLOUD_DIR"],
        KACHERY_CLOUD_API_URL=cloud_client.url,
        KACHERY_CLOUD_QUIET="1",
    )
    bin_dir = Path(sys.executable).parent

    def run(*args: str, directory: Path | None = None) -> subprocess.CompletedProcess[str]:
        run_env = env if directory is None else {**env, "KACHERY_CLOUD_DIR": str(directory)}
        return subprocess.run([str(bin_dir / args[0]), *args[1:]], env=run_env, capture_output=True, text=True)

    stored = run("kachery-cloud-store", str(source))
    assert stored.returncode == 0, stored.stderr
    uri = stored.stdout.strip()
    assert uri == kcl.store_text_local("from the command line\n", label="notes.txt")
    fresh = tmp_path / "fresh"
    assert run("kachery-cloud-init", directory=fresh).returncode == 0
    info = run("kachery-cloud-load-info", uri, directory=fresh)
    assert json.loads(info.stdout)["local_path"] is None and json.loads(info.stdout)["size"] == 22
    assert run("kachery-cloud-cat", uri, directory=fresh).stdout == "from the command line\n"
    loaded = run("kachery-cloud-load", uri, directory=fresh)
    assert Path(loaded.stdout.strip()).read_text() == "from the command line\n"
    missing = run("kachery-cloud-load", "sha1://" + "ab" * 20, directory=fresh)
    assert missing.returncode == 1 and "not in the local store or in any project" in missing.stderr
    ephemeral = subprocess.run(
        [str(bin_dir / "kachery-cloud-store"), str(source)],
        env={**env, "KACHERY_CLOUD_EPHEMERAL": "1", "KACHERY_CLOUD_DIR": str(tmp_path / "eph")},
        capture_output=True,
        text=True,
    )
    assert ephemeral.returncode == 1 and "ephemeral mode" in ephemeral.stderr
    assert not (tmp_path / "eph" / "private.pem").exists()  # refused before any key was made
