"""Hostile input through a real API server and its store, on both stores: bucket keys and the server's data
directory stay in their layout; requests that skip the client's checks are refused by the server."""

import json
import os
import re
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import kachery_cloud as kcl
from kachery_cloud.errors import (
    InvalidMutableKeyError,
    InvalidURIError,
    ServerError,
    ServerUnreachableError,
)
from kachery_cloud.protocol.mutable_key import validate_folder_key, validate_mutable_key
from kachery_cloud.protocol.uri import parse_uri

from ..helpers import switch_client
from ..servers import RunningServer
from .conftest import Figure, Figures
from .hostile_kit import TEXT_CHAR, TEXT_PIECES, any_keys, fuzz, hostile, oracle

# --------------------------------------------------------------------------------------------- the server


OBJECT_KEY = re.compile(
    r"projects/(?P<project>[a-z0-9][a-z0-9_-]{0,63})/"
    r"(?:sha1/(?P<a>[0-9a-f]{2})/(?P<b>[0-9a-f]{2})/(?P<c>[0-9a-f]{2})/(?P<sha1>[0-9a-f]{40})(?:\.[0-9a-f]{32})?"
    r"|packs/(?P<pa>[0-9a-f]{2})/(?P<pack>[0-9a-f]{40}))"
)


def bucket_problems(cloud: RunningServer, projects: set[str]) -> tuple[list[str], list[str]]:
    """Every object key in the bucket, and those not in the documented shape or outside ``projects``."""
    s3, bucket = cloud.s3_client()
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    ]
    problems = []
    for key in keys:
        m = OBJECT_KEY.fullmatch(key)
        if m is None or m["project"] not in projects:
            problems.append(f"object key outside the documented layout: {key!r}")
        elif m["sha1"] and (m["a"], m["b"], m["c"]) != (m["sha1"][0:2], m["sha1"][2:4], m["sha1"][4:6]):
            problems.append(f"blob key with the wrong fan-out: {key!r}")
        elif m["pack"] and m["pa"] != m["pack"][:2]:
            problems.append(f"pack key with the wrong fan-out: {key!r}")
    return keys, problems


def data_dir_problems(cloud: RunningServer, before: set[Path], object_keys: list[str]) -> list[str]:
    """New files in the server's data directory must be the database, logs, or the embedded nanio's copy of an
    object of the bucket (``s3/<bucket>/<key>`` and ``s3/<bucket>/.nanio-meta/<key>.json``) or its staging."""
    _, bucket = cloud.s3_client()
    keys = set(object_keys)
    problems = []
    for path in sorted(set(cloud.data_dir.rglob("*")) - before):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(cloud.data_dir).parts
        if len(rel) == 1 and (rel[0].startswith("server.db") or rel[0].endswith(".log")):
            continue
        if rel[:2] == ("s3", ".nanio"):
            continue  # nanio's multipart staging
        if rel[:2] == ("s3", bucket) and len(rel) > 2:
            if rel[2] == ".nanio-meta" and rel[-1].endswith(".json"):
                key = "/".join(rel[3:])[: -len(".json")]
            else:
                key = "/".join(rel[2:])
            if key in keys:
                continue
        problems.append(f"unexpected file in the server's data directory: {path}")
    return problems


def valid_hostile_keys(folder: str) -> list[str]:
    """Keys the grammar accepts although they look dangerous: each must stay one row, not a path."""
    return [
        f"{folder}/x..",
        f"{folder}/@../x",
        f"{folder}/@../@../etc",
        f"{folder}/@.../x",
        f"{folder}/a\\..\\..\\b",
        f"{folder}/C:\\Windows",
        f"{folder}/%2e%2e%2f%00",
        f"{folder}/\u00e9",  # typed as e + U+0301 it is this same key (NFC): see test_hostile_keys
        f"{folder}/@\uff0e\uff0e/\u2215etc\u2215passwd",
        f"{folder}/\U0001f600",
        f"{folder}/~root",
        f"{folder}/" + "x" * 255,
        f"{folder}/" + "\u00e9" * 127,
    ]


INVALID_KEYS = [
    "/etc/passwd",
    "@lab/../x",
    "@lab/./x",
    "@lab//x",
    "@lab/x/",
    "@lab/.x",
    "@lab/x\x00y",
    "@lab/x\ny",
    "@lab/\ud800",
    "@lab/\u202eexe.txt",  # bidirectional override, zero-width space, byte order mark: look-alike keys
    "@lab/\u200b",
    "@lab/x\ufeff",
    "lab/x",
    "..",
    "",
    "@lab/" + "x" * 256,
    "@a/" * 400 + "x",
]


def test_cloud_hostile_labels_keys_and_messages_stay_inside_the_project(
    cloud_client: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    cloud = cloud_client
    before = set(cloud.data_dir.rglob("*"))
    started = time.monotonic()
    labels = [*TEXT_PIECES, "x" * 5000, "\u202e" * 100 + "/" * 100]
    uris: dict[str, bytes] = {}

    # Content through every path to the store, each under hostile labels: one blob inline (store_text), many small
    # ones inline in one request (a pack), a single PUT, a multipart upload (over 1 MiB in these servers' settings).
    for label in ("../../../../etc/passwd", "\x00", "\u202e" * 100 + "/" * 100):
        uri = kcl.store_text(f"text {label} {secrets.token_hex(4)}", label=label)
        assert parse_uri(uri).label == label
        uris[uri] = kcl.load_text(uri, local_only=True).encode("utf-8")  # type: ignore[union-attr]
    document = {label: label for label in labels}
    uri = kcl.store_json(document, label="C:\\Windows\\")
    uris[uri] = oracle(document)
    sizes = [10 + i for i in range(len(labels))] + [200_000, 1_500_000]
    files = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"file-{i}"
        path.write_bytes(os.urandom(size))
        files.append(path)
    file_labels = [*labels, "/abs", "\U000e0041"]
    stored = kcl.store_files(files, labels=file_labels)
    for path, uri, label in zip(files, stored, file_labels, strict=True):
        assert parse_uri(uri).label == label
        uris[uri] = path.read_bytes()

    # Mutables with keys that look like paths; values with NUL and odd Unicode.
    folder = f"@hostile{secrets.token_hex(3)}"
    keys = valid_hostile_keys(folder)
    for i, key in enumerate(keys):
        assert kcl.set_mutable(key, f"value {i} \x00 \u202e {key}") == 1
    for i, key in enumerate(keys):
        assert kcl.get_mutable(key) == f"value {i} \x00 \u202e {key}"
    assert kcl.list_mutables(folder) == sorted(keys)
    for key in INVALID_KEYS:
        for validate in (validate_mutable_key, validate_folder_key):
            with pytest.raises(InvalidMutableKeyError):
                validate(key)  # invalid as a key and as a folder key, so every call below must refuse it
        for call in (
            lambda k: kcl.set_mutable(k, "v"),
            kcl.get_mutable,
            kcl.delete_mutable,
            kcl.delete_mutable_folder,
            kcl.list_mutables,
        ):
            with pytest.raises(InvalidMutableKeyError):
                call(key)

    # Feeds have no names; their messages may hold anything JSON can.
    feed = kcl.create_feed()
    messages = [{"../../x": "\x00", "\u202e": ["/etc/passwd", "\ud800"], "C:\\": {"": None}}, {"k": "x" * 10_000}]
    feed.append_messages(messages)
    assert kcl.load_feed(feed.uri).get_next_messages(timeout_sec=10) == messages
    for bad in (
        "kachery-feed://../../x",
        "kachery-feed:///etc/passwd",
        "kachery-feed://" + "a" * 31 + "\x00",
        "\ud800",
    ):
        with pytest.raises(InvalidURIError):
            kcl.load_feed(bad)

    # Everything is in the bucket where the layout says, and nowhere else.
    object_keys, problems = bucket_problems(cloud, {"default"})
    problems += data_dir_problems(cloud, before, object_keys)

    # ... and a second machine gets exactly those bytes back.
    switch_client(monkeypatch, tmp_path / "second-machine")
    for uri, data in uris.items():
        assert Path(kcl.load_file(uri) or "").read_bytes() == data, uri
    figures.record(
        Figure(
            item="6 hostile input: bucket keys and server data directory",
            runs=len(labels) + len(keys) + len(INVALID_KEYS) + len(messages),
            errors=len(problems),
            seconds=time.monotonic() - started,
            details={"objects_checked": len(object_keys), "labels": len(labels), "keys": len(keys)},
        )
    )
    assert problems == []


def fresh_api() -> Any:
    """A client of its own (own connection, one attempt), so that one request's fate cannot touch another's."""
    from kachery_cloud.api.client import ApiClient
    from kachery_cloud.config import load_config
    from kachery_cloud.identity import load_identity

    config = load_config()
    return ApiClient(config.effective_api_url, load_identity(config), max_attempts=1)


# (what, endpoint, body, whether the server must refuse it): a cursor (``after``) is only compared with keys, so
# answering it is fine too; anything but a 4xx or an answer (a 500, a dropped connection) is a failure.
REFUSE, ANSWER_OR_REFUSE = True, False
RAW_CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("set key with NUL", "/api/mutables/set", {"key": "@a/b\x00c", "value": "v"}, REFUSE),
    ("set key with surrogate", "/api/mutables/set", {"key": "@a/b\ud800", "value": "v"}, REFUSE),
    ("set key ..", "/api/mutables/set", {"key": "@a/..", "value": "v"}, REFUSE),
    ("set absolute key", "/api/mutables/set", {"key": "/etc/passwd", "value": "v"}, REFUSE),
    ("set long key", "/api/mutables/set", {"key": "@a/" * 400 + "x", "value": "v"}, REFUSE),
    ("set surrogate value", "/api/mutables/set", {"key": "@a/b", "value": "\udc80"}, REFUSE),
    ("get key with NUL", "/api/mutables/get", {"key": "@a/\x00"}, REFUSE),
    ("delete key ..", "/api/mutables/delete", {"key": "@a/.."}, REFUSE),
    ("delete-folder ..", "/api/mutables/delete-folder", {"folder_key": "@a/.."}, REFUSE),
    ("delete-folder /", "/api/mutables/delete-folder", {"folder_key": "/"}, REFUSE),
    ("list folder ..", "/api/mutables/list", {"folder_key": "@a/.."}, REFUSE),
    ("list folder with NUL", "/api/mutables/list", {"folder_key": "@a\x00"}, REFUSE),
    ("list after with NUL", "/api/mutables/list", {"after": "@a/\x00"}, ANSWER_OR_REFUSE),
    ("list after with surrogate", "/api/mutables/list", {"after": "@a/\ud800"}, ANSWER_OR_REFUSE),
    ("project id with NUL", "/api/mutables/get", {"key": "@a/b", "project_id": "default\x00"}, REFUSE),
    ("project id with surrogate", "/api/mutables/get", {"key": "@a/b", "project_id": "default\ud800"}, REFUSE),
    ("project id ..", "/api/mutables/get", {"key": "@a/b", "project_id": "../default"}, REFUSE),
    ("find traversal hash", "/api/blobs/find", {"sha1s": ["../../" + "a" * 34]}, REFUSE),
    ("find NUL hash", "/api/blobs/find", {"sha1s": ["a" * 39 + "\x00"]}, REFUSE),
    ("find surrogate hash", "/api/blobs/find", {"sha1s": ["a" * 39 + "\ud800"]}, REFUSE),
    ("need traversal hash", "/api/blobs/need", {"blobs": [{"sha1": "../" + "a" * 37, "size": 3}]}, REFUSE),
    ("need uppercase hash", "/api/blobs/need", {"blobs": [{"sha1": "A" * 40, "size": 3}]}, REFUSE),
    ("inline traversal hash", "/api/blobs/inline", {"blobs": [{"sha1": "../" + "a" * 37, "data": "YWJj"}]}, REFUSE),
    ("inline project id with NUL", "/api/blobs/inline", {"project_id": "x\x00", "blobs": []}, REFUSE),
    ("need project id with surrogate", "/api/blobs/need", {"project_id": "\ud800", "blobs": []}, REFUSE),
]


def test_hostile_requests_that_skip_the_client_checks_are_refused_by_the_server(
    cloud_client: RunningServer, figures: Figures
) -> None:
    """The server checks what the client checks (a client may be anyone's code). Each request must be refused with
    a 4xx and its error code (a cursor may also just be answered), never a 500 or a dropped connection, and must
    leave nothing in the bucket or the data directory.

    Fails today: on SQLite a lone surrogate in ``project_id`` or ``after`` is a 500 (UnicodeEncodeError in the
    driver); on PostgreSQL so is a NUL in them ("PostgreSQL text fields cannot contain NUL"). Neither is checked
    before it reaches the database (api_server/services/projects.py caller_project/get_project,
    api_server/services/mutables.py list_keys)."""
    before = set(cloud_client.data_dir.rglob("*"))
    bad: dict[str, str] = {}
    for name, path, body, must_refuse in RAW_CASES:
        try:
            fresh_api().call("POST", path, json_body=body, idempotent=False)
            outcome = "answered"
        except ServerError as e:
            outcome = f"{e.status} {e.error_code}"
        except ServerUnreachableError as e:
            outcome = f"connection lost: {e}"
        if not (re.fullmatch(r"4\d\d \w+", outcome) or (outcome == "answered" and not must_refuse)):
            bad[name] = outcome
    object_keys, problems = bucket_problems(cloud_client, {"default"})
    problems += data_dir_problems(cloud_client, before, object_keys)
    figures.record(
        Figure(
            item="6 hostile input: raw API requests",
            runs=len(RAW_CASES),
            errors=len(bad) + len(problems),
            details={"failed": bad},
        )
    )
    assert bad == {}
    assert problems == []


def test_a_hostile_request_leaves_the_connection_usable_or_says_it_closes(cloud: RunningServer) -> None:
    """After answering a request on a keep-alive connection, the server either takes the next request on it or
    says ``Connection: close``. Fails today after a 500 (here: a lone surrogate or a NUL in ``project_id``, see
    above): api_server/app.py ``_unexpected`` sends the 500 without that header, Starlette re-raises the exception
    and uvicorn then closes the socket. requests keeps the connection in its pool, so the client's next call fails
    with ServerUnreachableError ("connection reset"), and a compare-and-swap ``set_mutable`` is not retried.
    Checked on one raw connection (anonymous ``mutables/get``, which names its project), where the outcome does
    not depend on how fast the close arrives."""
    import http.client

    failures = []
    for project_id in ("default\ud800", "default\x00", "no-such-project"):
        connection = http.client.HTTPConnection("127.0.0.1", cloud.port, timeout=30)
        try:
            body = json.dumps({"key": "@a/b", "project_id": project_id}).encode("ascii")
            connection.request("POST", "/api/mutables/get", body=body, headers={"Content-Type": "application/json"})
            first = connection.getresponse()
            first.read()
            if (first.getheader("Connection") or "").lower() == "close":
                continue  # announced: a client opens a new connection
            try:
                connection.request("GET", "/api/health")
                second = connection.getresponse()
                second.read()
                assert second.status == 200
            except (OSError, http.client.HTTPException) as e:
                failures.append(f"after HTTP {first.status} for project_id {project_id!r}: {type(e).__name__} {e}")
        finally:
            connection.close()
    assert failures == []


def test_client_and_server_agree_on_the_key_grammar(cloud_client: RunningServer, soak: bool, figures: Figures) -> None:
    """Whatever key the client refuses, the server refuses too (400 invalid_key), and whatever the client accepts,
    the server stores as exactly that key."""
    runs = Counter[str]()
    disagreements: list[str] = []

    @fuzz(soak, 25, any_keys(), hostile(TEXT_CHAR))
    def check(key: str, value: str) -> None:
        runs["examples"] += 1
        try:
            validate_mutable_key(key)
            client_accepts = True
        except InvalidMutableKeyError:
            client_accepts = False
        api = fresh_api()
        try:
            api.call("POST", "/api/mutables/set", json_body={"key": key, "value": value}, idempotent=False)
        except ServerError as e:
            if client_accepts or (e.status, e.error_code) != (400, "invalid_key"):
                disagreements.append(f"{key!r}: client accepts {client_accepts}, server {e.status} {e.error_code}")
            runs["refused"] += 1
            return
        if not client_accepts:
            disagreements.append(f"{key!r}: the client refuses it, the server stored it")
            return
        runs["stored"] += 1
        assert kcl.get_mutable(key) == value

    check()
    _, problems = bucket_problems(cloud_client, {"default"})
    figures.record(
        Figure(
            item="6 hostile input: client and server key grammar",
            runs=runs["examples"],
            errors=len(disagreements) + len(problems),
            details={"stored": runs["stored"], "refused": runs["refused"]},
        )
    )
    assert disagreements == []
    assert problems == []
