"""The parties, their data and the checks that the attacks of the reliability suite share (items 7 of the
reliability issue and the security issue's items): one server per store (embedded nanio + SQLite, SeaweedFS +
PostgreSQL), made once per module, each party with its own key pair:

- victim: the server's local owner, admin of the private project ``default``, which holds a blob, a mutable,
  a feed with a message and a pending task; it also owns a public project with the same kinds of data;
- writer: another user with the ``write`` role in ``default`` (a member, but not an admin);
- reader: another user with the ``read`` role in ``default``;
- outsider: a registered client of yet another user, no member of ``default``.

An attack must be refused and leave no trace in the data: the bucket's objects and the rows of every data
table are the same before and after it (:class:`Trace`). Secrets (client private keys, the S3 secret key,
presigned URLs' signatures, request signatures) must never appear in what a client is told (:class:`Secrets`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import yaml

import kachery_cloud as kcl
from kachery_cloud._connection import api_client, forget_clients
from kachery_cloud.api import blobs as blobs_api
from kachery_cloud.identity import ClientIdentity
from kachery_cloud.protocol.feed_format import signed_bytes
from kachery_cloud.protocol.keys import private_key_hex

from ..helpers import new_identity, signed_headers
from ..servers import RunningServer

KIB = 1 << 10
MIB = 1 << 20
SMALL_UPLOAD = 200 * KIB  # over the inline limit: a presigned upload (one PUT where the store checks SHA-1)
TWO_PART_UPLOAD = 6 * MIB  # over single_put_max_bytes of the tests (1 MiB): multipart, 5 MiB parts, everywhere

# Tables that legitimately change on every request, refused or not; everything else in the database is data.
BOOKKEEPING_TABLES = {
    "request_nonces",  # every verified signature stores its nonce (replay protection), whatever the endpoint says
    "usage_counters",  # counts requests and bytes per day, refused reads included
    "alembic_version",  # the schema's version, not data
}
# Columns that every signed request may change: when a client was last seen (kept to the minute).
BOOKKEEPING_COLUMNS = {("clients", "last_seen_ms")}
# Uploads in progress are never served. A refused completion may drop the attacker's own upload row (the
# server cleaning up), so this table may lose rows during an attack but never gain or change one.
UPLOADS_TABLE = "uploads"


# ------------------------------------------------------------------------------------------------ the world


@dataclass(frozen=True)
class Party:
    name: str
    identity: ClientIdentity
    email: str | None  # None: the server's local owner

    @property
    def client_id(self) -> str:
        return self.identity.client_id


@dataclass
class World:
    server: RunningServer
    store: str  # "nanio-sqlite" | "seaweedfs-postgresql"
    victim: Party
    writer: Party
    reader: Party
    outsider: Party
    public_project: str
    private_uri: str = ""
    private_key_name: str = ""
    private_feed_id: str = ""
    private_task_id: str = ""
    public_uri: str = ""
    public_key_name: str = ""
    public_feed_id: str = ""
    public_task_id: str = ""
    engine: Any = None  # SQLAlchemy engine on the server's database, used read-only
    s3: Any = None  # boto3 client with the server's credentials, and its bucket
    bucket: str = ""

    @property
    def url(self) -> str:
        return self.server.url


def become(monkeypatch: pytest.MonkeyPatch, world: World, party: Party | None) -> None:
    """Make the kachery_cloud calls of this process act as ``party`` (None: an ephemeral client)."""
    monkeypatch.setenv("KACHERY_CLOUD_API_URL", world.url)
    monkeypatch.delenv("KACHERY_CLOUD_PROJECT", raising=False)
    if party is None:
        monkeypatch.delenv("KACHERY_CLOUD_CLIENT_ID", raising=False)
        monkeypatch.delenv("KACHERY_CLOUD_PRIVATE_KEY", raising=False)
        monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "1")
    else:
        monkeypatch.delenv("KACHERY_CLOUD_EPHEMERAL", raising=False)
        monkeypatch.setenv("KACHERY_CLOUD_CLIENT_ID", party.client_id)
        monkeypatch.setenv("KACHERY_CLOUD_PRIVATE_KEY", private_key_hex(party.identity.private_key))
    forget_clients()  # a client cached for another party must not be reused


def admin(server: RunningServer, *args: str) -> str:
    """``kachery-cloud-server admin ...`` on the server's database, run in this process (the same code as the
    command, without an interpreter start per call; memberships have no API, see member-grants-itself-admin)."""
    from click.testing import CliRunner

    from api_server.cli import main

    env = {"KACHERY_CLOUD_SERVER_DATABASE_URL": server.env.get("KACHERY_CLOUD_SERVER_DATABASE_URL")}
    result = CliRunner().invoke(main, ["admin", *args, "--data-dir", str(server.data_dir)], env=env)
    assert result.exit_code == 0, f"admin {args}: {result.output}"
    return result.output


def _party(server: RunningServer, name: str, email: str | None, project: str, role: str) -> Party:
    """A key pair made here (the private key never leaves this process) and registered by the admin CLI."""
    identity = new_identity()
    if email is None:
        admin(server, "register-client", identity.client_id, "--label", name)
    else:
        admin(server, "add-member", project, email, "--role", role)  # creates the user
        admin(server, "register-client", identity.client_id, "--user", email, "--label", name)
    return Party(name, identity, email)


def _database_engine(server: RunningServer) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    url = server.env.get("KACHERY_CLOUD_SERVER_DATABASE_URL")
    if url is None:  # the embedded SQLite file, opened read-only
        url = f"sqlite:///file:{server.data_dir / 'server.db'}?mode=ro&uri=true"
    return create_engine(url, poolclass=NullPool)


def store_name(server: RunningServer) -> str:
    return "seaweedfs-postgresql" if "KACHERY_CLOUD_SERVER_DATABASE_URL" in server.env else "nanio-sqlite"


def build_world(cloud: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The parties and the victim's data, once per server (the ``world`` fixture of tests/reliability/conftest.py)."""
    public_project = f"open-{secrets.token_hex(3)}"
    admin(cloud, "create-project", public_project, "--public")  # owned by the local owner
    tag = secrets.token_hex(3)
    w = World(
        server=cloud,
        store=store_name(cloud),
        victim=_party(cloud, "victim", None, "", ""),
        writer=_party(cloud, "writer", f"writer-{tag}@example.org", "default", "write"),
        reader=_party(cloud, "reader", f"reader-{tag}@example.org", "default", "read"),
        # A member of nothing but the public project (membership there changes nothing for `default`).
        outsider=_party(cloud, "outsider", f"outsider-{tag}@example.org", public_project, "read"),
        public_project=public_project,
    )
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("KACHERY_"):
                mp.delenv(name)
        mp.setenv("KACHERY_CLOUD_DIR", str(tmp_path_factory.mktemp("victim-client")))
        mp.setenv("KACHERY_CLOUD_QUIET", "1")
        become(mp, w, w.victim)
        for project, prefix in (("default", "private"), (public_project, "public")):
            uri = kcl.store_text(f"{prefix} lab notes {tag}", label="notes.txt")
            key = f"@lab/@{prefix}/latest"
            kcl.set_mutable(key, uri, project_id=project)
            feed = kcl.create_feed(project_id=project)
            feed.append_message({"epoch": 1, "loss": 0.5})
            # A pending task: nobody runs this calculation, so it stays pending.
            task = api_client().call(
                "POST",
                "/api/tasks/request",
                json_body={"project_id": project, "task_type": "calculation", "task_name": "lab.fit",
                           "task_input": {"run": prefix}, "wait_ms": 0},
            )  # fmt: skip
            assert task["state"] == "pending"
            setattr(w, f"{prefix}_uri", uri)
            setattr(w, f"{prefix}_key_name", key)
            setattr(w, f"{prefix}_feed_id", feed.feed_id)
            setattr(w, f"{prefix}_task_id", task["task_id"])
        forget_clients()
    w.engine = _database_engine(cloud)
    w.s3, w.bucket = cloud.s3_client()
    yield w
    w.engine.dispose()


# ------------------------------------------------------------------------------------------------ traces


@dataclass(frozen=True)
class Snapshot:
    objects: frozenset[tuple[str, int, str]]  # (key, size, ETag) of every object in the bucket
    tables: dict[str, list[tuple[Any, ...]]]  # every data table's rows, sorted


def snapshot(world: World) -> Snapshot:
    from sqlalchemy import inspect, text

    objects = set()
    for page in world.s3.get_paginator("list_objects_v2").paginate(Bucket=world.bucket):
        for item in page.get("Contents", []):
            objects.add((item["Key"], int(item["Size"]), str(item["ETag"])))
    tables: dict[str, list[tuple[Any, ...]]] = {}
    with world.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET TRANSACTION READ ONLY"))
        # Every table the database has, so that a data table added later is covered without editing this file;
        # rate-limit state, should it ever move into the database, is bookkeeping too.
        for table in sorted(inspect(conn).get_table_names()):
            if table in BOOKKEEPING_TABLES or "rate_limit" in table:
                continue
            columns = [
                f'"{c["name"]}"'
                for c in inspect(conn).get_columns(table)
                if (table, c["name"]) not in BOOKKEEPING_COLUMNS
            ]
            rows = [tuple(row) for row in conn.execute(text(f'SELECT {", ".join(columns)} FROM "{table}"'))]
            tables[table] = sorted(rows, key=repr)
    return Snapshot(frozenset(objects), tables)


def trace_left(before: Snapshot, after: Snapshot) -> list[str]:
    """What an attack changed in the data, in words (empty: no trace)."""
    changes = []
    for key, size, _etag in sorted(after.objects - before.objects):
        changes.append(f"new or rewritten object {key} ({size} bytes)")
    for key, size, _etag in sorted(before.objects - after.objects):
        changes.append(f"object {key} ({size} bytes) is gone")
    for table in sorted(set(before.tables) | set(after.tables)):
        old, new = set(before.tables.get(table, [])), set(after.tables.get(table, []))
        added, removed = new - old, old - new
        if table == UPLOADS_TABLE:
            removed = set()  # a refused upload cleaned up (see UPLOADS_TABLE)
        changes += [f"{table}: new row {row!r:.300}" for row in sorted(added, key=repr)]
        changes += [f"{table}: row gone {row!r:.300}" for row in sorted(removed, key=repr)]
    return changes


class Trace:
    """The data as it was before the hostile step. An attack that needs a legitimate step first (asking for upload
    instructions, sending the request it will replay) calls :meth:`checkpoint` after it."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.before = snapshot(world)

    def checkpoint(self) -> None:
        self.before = snapshot(self.world)


# ------------------------------------------------------------------------------------------------ refusals


@dataclass
class Observed:
    """The refusals an attack met, and every error text a client saw (scanned for secrets)."""

    refusals: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def response(self, response: requests.Response, status: int, code: str, what: str) -> None:
        """``response`` must be the API's refusal ``status`` with ``error_code`` ``code``."""
        try:
            got = response.json().get("error_code")
        except ValueError:
            got = None
        assert (response.status_code, got) == (status, code), f"{what}: {response.status_code} {response.text[:500]}"
        self.refusals.append(f"{what}: {status} {code}")
        self.texts.append(response.text)

    def store_refused(self, response: requests.Response, statuses: tuple[int, ...], what: str) -> None:
        """The object store itself refused a request made with a presigned URL."""
        assert response.status_code in statuses, f"{what}: the store answered {response.status_code} {response.text}"
        code = re.search(r"<Code>([^<]*)</Code>", response.text)
        self.refusals.append(f"{what}: store {response.status_code} {code.group(1) if code else ''}".rstrip())
        self.texts.append(response.text)

    def raises(self, error: type[Exception], call: Callable[[], Any], what: str, code: str | None = None) -> None:
        """``call()`` must raise ``error`` (with the server's ``error_code`` ``code``, for a ServerError)."""
        with pytest.raises(error) as info:
            call()
        if code is not None:
            assert getattr(info.value, "error_code", None) == code, f"{what}: {info.value!r}"
        self.refusals.append(f"{what}: {error.__name__}" + (f" {code}" if code else ""))
        self.texts.append(str(info.value))

    def note(self, text: str) -> None:
        self.refusals.append(text)


# ------------------------------------------------------------------------------------------------ raw requests


@dataclass(frozen=True)
class Captured:
    """A request exactly as it travels: the bytes of its body and all its headers."""

    method: str
    target: str
    body: bytes
    headers: dict[str, str]

    def send(self, server: World | RunningServer, **header_changes: str) -> requests.Response:
        headers = {**self.headers, **header_changes}
        return requests.request(self.method, server.url + self.target, data=self.body, headers=headers, timeout=30)


def build(
    method: str,
    target: str,
    payload: Any = None,
    *,
    to: str = "",
    signer: ClientIdentity | None = None,
    **overrides: Any,
) -> Captured:
    """A request for the server at ``to``, signed by ``signer`` (unsigned if None)."""
    body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json"} if body else {}
    if signer is not None:
        headers.update(signed_headers(signer, method, target, body, server=to, **overrides))
    return Captured(method, target, body, headers)


def send(world: World, method: str, target: str, payload: Any = None, **kwargs: Any) -> requests.Response:
    return build(method, target, payload, to=world.url, **kwargs).send(world)


def feed_append(feed_id: str, signer: ClientIdentity, message: dict[str, Any]) -> dict[str, Any]:
    """An append body whose message is properly signed by ``signer`` (the feed-message signature)."""
    body = json.dumps(message, separators=(",", ":"), sort_keys=True)
    return {
        "append_id": secrets.token_hex(16),
        "messages": [{"body": body, "signature": signer.sign(signed_bytes(feed_id, body))}],
    }


def sha1_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


def assert_not_findable(world: World, monkeypatch: pytest.MonkeyPatch, sha1s: list[str]) -> None:
    """None of ``sha1s`` is served to the victim, an admin of the project (so, to anyone)."""
    become(monkeypatch, world, world.victim)
    found, _ = blobs_api.find(api_client(), sha1s, "default")
    assert not found, f"served: {found}"
    for sha1 in sha1s:
        assert kcl.load_file(f"sha1://{sha1}") is None


# ------------------------------------------------------------------------------------------------ secrets


@dataclass
class Secrets:
    """What must never be logged or shown in an error, by kind."""

    values: dict[str, set[str]] = field(default_factory=dict)

    def add(self, kind: str, value: str) -> None:
        if value:
            self.values.setdefault(kind, set()).add(value)

    def add_private_key(self, identity: ClientIdentity) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

        key = identity.private_key
        raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        der = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
        self.add("private key (PEM)", pem.strip())
        self.add("private key (hex)", raw.hex())
        self.add("private key (hex)", raw.hex().upper())
        self.add("private key (base64)", base64.b64encode(raw).decode().rstrip("="))
        self.add("private key (base64)", base64.urlsafe_b64encode(raw).decode().rstrip("="))
        self.add("private key (PEM body)", base64.b64encode(der).decode())

    def add_s3_secret(self, server: RunningServer) -> None:
        # The access key id is not secret: it is in every presigned URL (X-Amz-Credential) handed to clients.
        settings_file = server.data_dir / "settings.yaml"
        s3 = (yaml.safe_load(settings_file.read_text()) or {}).get("s3") if settings_file.exists() else None
        if s3 is None:
            s3 = json.loads((server.data_dir / "s3-credentials.json").read_text())
        self.add("S3 secret access key", s3["secret_access_key"])

    def leaks(self, haystacks: dict[str, str]) -> list[str]:
        found = []
        for kind, values in sorted(self.values.items()):
            for value in sorted(values):
                found += [f"{kind} {value[:12]}... in {where}" for where, text in haystacks.items() if value in text]
        return found


class Recorder:
    """Every API response of this process's kachery_cloud clients: the URLs they hand out, the request
    signatures they carried, the error texts they returned."""

    def __init__(self) -> None:
        self.responses: list[requests.Response] = []

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.responses.append(response)

    def attach(self) -> None:
        api = api_client()
        if self not in api.session.hooks["response"]:
            api.session.hooks["response"].append(self)


def server_logs(server: RunningServer) -> dict[str, str]:
    """The server's log and every other log file in its data directory (the embedded store's too)."""
    logs = {"server log": server.log()}
    for path in sorted(server.data_dir.glob("*.log")):
        if path != server.log_path:
            logs[path.name] = path.read_text(errors="replace")
    return logs
