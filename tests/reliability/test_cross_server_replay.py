"""Item 2 of the security issue: a signed request cannot be replayed to another server. One ``~/.kachery-cloud`` key
is used with every server, so servers A and B here know the same client, as the owner (admin) of a project named
``default`` on each: the requests it sent to A would do the same on B, were B to accept them. B must refuse them
(``wrong_server``) and change nothing; a client of the old scheme (no server in the signature) is told to upgrade;
the real client signs for the server it talks to, and follows a server replaced at the same address.
"""

from __future__ import annotations

import io
import json
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

import kachery_cloud as kcl
from kachery_cloud._connection import api_client, forget_clients
from kachery_cloud.identity import ClientIdentity
from kachery_cloud.protocol.keys import private_key_hex
from kachery_cloud.protocol.request_signing import (
    HEADER_CLIENT_ID,
    HEADER_NONCE,
    HEADER_SERVER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    body_digest,
    verify_signature,
)

from ..helpers import new_identity, server_id_of
from ..servers import PostgresDatabases, RunningServer, clean_env, start_server
from .attack_kit import Captured, Party, World, _database_engine, admin, snapshot, store_name, trace_left
from .conftest import Figure, Figures

ROOT = Path(__file__).resolve().parents[2]
RUN, SCRATCH = "@lab/@run/latest", "@lab/@scratch"
UPGRADE_HINT = "pip install --upgrade kachery-cloud"


@dataclass
class Pair:
    a: RunningServer
    b: RunningServer
    lab: ClientIdentity  # the one key of the lab's client, registered on both as the servers' owner
    database: str
    view_of_b: World  # B's bucket and database, for snapshots


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases
) -> Iterator[Pair]:
    def start(name: str) -> RunningServer:
        url = postgres.create() if request.param == "postgresql" else None
        return start_server(tmp_path_factory.mktemp(f"{name}-{request.param}"), database_url=url)

    a = start("server-a")
    b = start("server-b")
    lab = new_identity()
    for server in (a, b):
        admin(server, "register-client", lab.client_id, "--label", "lab laptop")  # the local owner: admin of default
    assert server_id_of(a.url) != server_id_of(b.url)
    party = Party("lab", lab, None)
    s3, bucket = b.s3_client()
    view = World(b, store_name(b), party, party, party, party, "", engine=_database_engine(b), s3=s3, bucket=bucket)
    try:
        yield Pair(a, b, lab, request.param, view)
    finally:
        view.engine.dispose()
        a.stop()
        b.stop()


def act_as(monkeypatch: pytest.MonkeyPatch, server: RunningServer, identity: ClientIdentity) -> list[Any]:
    """Make this process's kachery_cloud calls go to ``server`` as ``identity``; the list fills with the responses
    to every request the client then sends (``response.request``: the request exactly as sent)."""
    monkeypatch.setenv("KACHERY_CLOUD_API_URL", server.url)
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", "default")
    monkeypatch.setenv("KACHERY_CLOUD_CLIENT_ID", identity.client_id)
    monkeypatch.setenv("KACHERY_CLOUD_PRIVATE_KEY", private_key_hex(identity.private_key))
    forget_clients()
    sent: list[Any] = []
    api_client().session.hooks["response"].append(lambda response, *args, **kwargs: sent.append(response))
    return sent


def captured(sent: list[Any], method: str, path: str) -> Captured:
    """The one request of ``sent`` to ``path``, as bytes and headers."""
    matching = [r.request for r in sent if r.request.method == method and r.request.path_url.split("?")[0] == path]
    assert len(matching) == 1, [(r.request.method, r.request.path_url) for r in sent]
    r = matching[0]
    return Captured(r.method, r.path_url, r.body or b"", dict(r.headers))


def health(server: RunningServer) -> dict[str, Any]:
    """What the server at this address announces now (tests.helpers.server_id_of keeps the first id it saw)."""
    return dict(requests.get(f"{server.url}/api/health", timeout=30).json())


def answer(response: requests.Response) -> tuple[int, str | None]:
    try:
        return response.status_code, response.json().get("error_code")
    except ValueError:
        return response.status_code, None


def seed_folder(name: str) -> None:
    for k in ("a", "b"):
        kcl.set_mutable(f"{SCRATCH}/{k}", name)


def seed_task(name: str) -> None:
    """A pending task in the current project (nobody runs it): private data a task listing shows."""
    task = {"task_type": "calculation", "task_name": name, "task_input": {"run": name}, "wait_ms": 0}
    assert api_client().call("POST", "/api/tasks/request", json_body={"project_id": "default", **task})["state"]


@dataclass(frozen=True)
class Case:
    seed: Callable[[str], None]  # what each server has first (given "A" or "B")
    act: Callable[[], Any]  # the client call that sends the request to capture
    method: str
    path: str
    untouched: Callable[[], bool]  # B's state as seeded (a read changes nothing: its snapshot and answer count)


CASES: dict[str, Case] = {
    "mutables-set": Case(lambda name: kcl.set_mutable(RUN, f"old on {name}"),
                         lambda: kcl.set_mutable(RUN, "new, meant for A only"), "POST", "/api/mutables/set",
                         lambda: kcl.get_mutable(RUN) == "old on B"),
    "delete-folder": Case(seed_folder, lambda: kcl.delete_mutable_folder(SCRATCH), "POST",
                          "/api/mutables/delete-folder",
                          lambda: kcl.list_mutables(SCRATCH) == [f"{SCRATCH}/a", f"{SCRATCH}/b"]),
    "signed-get": Case(lambda name: seed_task(f"lab.private-{name}"),  # a private read: a private project's tasks
                       lambda: kcl.TaskClient("default").list_tasks(), "GET", "/api/tasks", lambda: True),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_request_signed_for_a_is_refused_by_b(
    case: str, pair: Pair, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    c, started, wrong = CASES[case], time.monotonic(), []
    for name, server in (("B", pair.b), ("A", pair.a)):
        act_as(monkeypatch, server, pair.lab)
        c.seed(name)
    sent = act_as(monkeypatch, pair.a, pair.lab)
    c.act()  # accepted by A
    request = captured(sent, c.method, c.path)
    assert request.headers[HEADER_SERVER_ID] == server_id_of(pair.a.url)
    act_as(monkeypatch, pair.b, pair.lab)
    assert c.untouched()  # the check sees B as seeded
    before = snapshot(pair.view_of_b)
    # Well within B's window (half of it): only the server id can refuse the replay.
    age_ms = int(time.time() * 1000) - int(request.headers[HEADER_TIMESTAMP])
    window_ms = health(pair.b)["signature_window_sec"] * 1000
    assert 0 <= age_ms < window_ms / 2, (age_ms, window_ms)
    b_id = server_id_of(pair.b.url)
    stripped = Captured(c.method, request.target, request.body,
                        {k: v for k, v in request.headers.items() if k != HEADER_SERVER_ID})  # fmt: skip
    replays = {
        "byte-identical": (request.send(pair.b), (401, "wrong_server")),
        # The attacker names B instead: the signature, made over A's id, no longer verifies.
        "server header set to B's id": (request.send(pair.b, **{HEADER_SERVER_ID: b_id}), (401, "bad_signature")),
        # Or strips the server header, as if it were a request of the old scheme: told to upgrade, not served.
        "server header removed": (stripped.send(pair.b), (401, "upgrade_required")),
    }
    for what, (response, expected) in replays.items():
        if answer(response) != expected:
            wrong.append(f"{what}: {response.status_code} {response.text[:300]}")
        elif "tasks" in response.text or "old on" in response.text:
            wrong.append(f"{what}: the refusal carries B's data: {response.text[:300]}")
    refusal = replays["byte-identical"][0].json().get("message", "")
    if b_id not in refusal or "/api/health" not in refusal:
        wrong.append(f"the wrong_server message does not say which server this is: {refusal!r}")
    changes = trace_left(before, snapshot(pair.view_of_b))
    if changes or not c.untouched():
        wrong.append(f"B changed: {changes}")
    # A knows the request as its own (the capture is exact): sent again, it is a replay there.
    again = answer(request.send(pair.a))
    if again != (401, "replayed_nonce"):
        wrong.append(f"A answered the captured request again with {again}")
    # The control: the same body, signed anew for B by the same key, is accepted by B: only the binding refused it.
    control = request.send(pair.b, **pair.lab.signed_headers(c.method, request.target, request.body, b_id))
    acted = "lab.private-B" in control.text if c.method == "GET" else not c.untouched()
    if control.status_code != 200 or not acted:
        wrong.append(f"control: signed for B it was not served: {control.status_code} {control.text[:300]}")
    figures.record(
        Figure(
            item=f"2 replay: {case} signed for A, replayed to B",
            runs=1,
            faults=len(replays),
            errors=len(wrong),
            seconds=time.monotonic() - started,
            details={"database": pair.database, "answers": {k: answer(r) for k, (r, _) in replays.items()}},
        )
    )
    assert not wrong, "\n".join(wrong)


def v1_request(identity: ClientIdentity, method: str, target: str, payload: Any = None) -> Captured:
    """A request as clients before scheme v2 signed it: the v1 message (no server line), no X-Kachery-Server."""
    body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    timestamp, nonce = str(int(time.time() * 1000)), secrets.token_hex(16)
    lines = ["kachery-cloud-request-v1", method, target, body_digest(body), timestamp, nonce, identity.client_id]
    message = "\n".join(lines).encode("utf-8")
    headers = {HEADER_CLIENT_ID: identity.client_id, HEADER_TIMESTAMP: timestamp, HEADER_NONCE: nonce,
               HEADER_SIGNATURE: identity.sign(message)}  # fmt: skip
    assert verify_signature(identity.client_id, message, headers[HEADER_SIGNATURE])  # a valid v1 signature
    if body:
        headers["Content-Type"] = "application/json"
    return Captured(method, target, body, headers)


def test_a_client_of_the_old_scheme_is_told_to_upgrade(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    act_as(monkeypatch, pair.b, pair.lab)
    kcl.set_mutable(f"{SCRATCH}-v1/kept", "kept")
    before = snapshot(pair.view_of_b)
    requests_v1 = {
        "mutables set": v1_request(pair.lab, "POST", "/api/mutables/set",
                                   {"project_id": "default", "key": f"{SCRATCH}-v1/kept", "value": "v1"}),
        "delete-folder": v1_request(pair.lab, "POST", "/api/mutables/delete-folder",
                                    {"project_id": "default", "folder_key": f"{SCRATCH}-v1"}),
        "signed GET": v1_request(pair.lab, "GET", "/api/tasks?project_id=default"),
        "who am I": v1_request(pair.lab, "GET", "/api/clients/me"),
    }  # fmt: skip
    wrong, answers = [], {}
    for what, request in requests_v1.items():
        response = request.send(pair.b)
        answers[what] = answer(response)
        message = response.json().get("message", "") if answer(response)[1] else ""
        if not (400 <= response.status_code < 500 and answer(response)[1] == "upgrade_required"):
            wrong.append(f"{what}: {response.status_code} {response.text[:300]}")
        elif "upgrade" not in message or UPGRADE_HINT not in message:
            wrong.append(f"{what}: the message does not tell how to upgrade: {message!r}")
    changes = trace_left(before, snapshot(pair.view_of_b))
    wrong += [f"B changed: {change}" for change in changes]
    if kcl.get_mutable(f"{SCRATCH}-v1/kept") != "kept":
        wrong.append("the v1 set or delete-folder acted")
    figures.record(
        Figure(
            item="2 replay: old-scheme (v1) requests told to upgrade",
            runs=len(requests_v1),
            errors=len(wrong),
            details={"database": pair.database, "answers": answers},
        )
    )
    assert not wrong, "\n".join(wrong)


def previous_release(dest: Path) -> Path | None:
    """The client of the last commit before requests named their server (scheme v2), from this checkout's git
    history; None if there is no such history here (a source archive, a shallow clone)."""
    git = shutil.which("git")
    if git is None:
        return None
    log = ["log", "--reverse", "--format=%H", "-S", "kachery-cloud-request-v2", "--", "kachery_cloud"]
    found = subprocess.run([git, "-C", str(ROOT), *log], capture_output=True, text=True, timeout=60)
    if found.returncode != 0 or not found.stdout.split():
        return None
    archive = [git, "-C", str(ROOT), "archive", f"{found.stdout.split()[0]}^", "kachery_cloud", "api_server"]
    tar = subprocess.run(archive, capture_output=True, timeout=60)
    if tar.returncode != 0:
        return None
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive_file:
        archive_file.extractall(dest, filter="data")
    signing = (dest / "kachery_cloud/protocol/request_signing.py").read_text()
    assert '"kachery-cloud-request-v1"' in signing and "X-Kachery-Server" not in signing
    return dest


def test_the_previous_release_client_is_told_to_upgrade(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    """The real client of before scheme v2 (from git history), run against B with the lab's key."""
    old = previous_release(tmp_path / "previous-release")
    if old is None:
        pytest.skip("no git history of this checkout to take the previous release's client from")
    act_as(monkeypatch, pair.b, pair.lab)
    kcl.set_mutable(f"{SCRATCH}-old/kept", "kept")
    env = clean_env(
        PYTHONPATH=str(old), KACHERY_CLOUD_DIR=str(tmp_path / "old-client"), KACHERY_CLOUD_API_URL=pair.b.url,
        KACHERY_CLOUD_PROJECT="default", KACHERY_CLOUD_CLIENT_ID=pair.lab.client_id, KACHERY_CLOUD_QUIET="1",
        KACHERY_CLOUD_PRIVATE_KEY=private_key_hex(pair.lab.private_key),
    )  # fmt: skip
    code = f"""
import kachery_cloud as kcl
assert kcl.__file__.startswith({str(old)!r}), kcl.__file__
for call in (lambda: kcl.set_mutable("{SCRATCH}-old/kept", "old client"), lambda: kcl.list_mutables("@lab")):
    try:
        call()
        print("ACCEPTED")
    except Exception as e:
        print(type(e).__name__, getattr(e, "error_code", None), "|", e)
"""
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    lines = run.stdout.splitlines()
    wrong = [] if run.returncode == 0 and len(lines) == 2 else [f"the old client failed: {run.stdout} {run.stderr}"]
    wrong += [
        f"the old client saw: {line}" for line in lines if "upgrade_required" not in line or UPGRADE_HINT not in line
    ]
    if kcl.get_mutable(f"{SCRATCH}-old/kept") != "kept":
        wrong.append("the old client's set acted")
    figures.record(
        Figure(
            item="2 replay: the previous release's client told to upgrade",
            runs=len(lines),
            errors=len(wrong),
            details={"database": pair.database, "errors seen": [line.split("|")[0].strip() for line in lines]},
        )
    )
    assert not wrong, "\n".join(wrong)


def test_the_client_signs_for_the_server_it_is_pointed_at(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    sent = act_as(monkeypatch, pair.a, pair.lab)
    kcl.set_mutable(f"{SCRATCH}-switch/x", "on A")
    # Pointed at B (the variable changed, the process's client cache kept): it signs for B and works.
    monkeypatch.setenv("KACHERY_CLOUD_API_URL", pair.b.url)
    api_client().session.hooks["response"].append(lambda response, *args, **kwargs: sent.append(response))
    kcl.set_mutable(f"{SCRATCH}-switch/x", "on B")
    assert kcl.get_mutable(f"{SCRATCH}-switch/x") == "on B"
    monkeypatch.setenv("KACHERY_CLOUD_API_URL", pair.a.url)
    assert kcl.get_mutable(f"{SCRATCH}-switch/x") == "on A"  # and back to A, whose client it still has
    signed_for = [(r.request.url.split("/api")[0], r.request.headers.get(HEADER_SERVER_ID), r.status_code)
                  for r in sent if r.request.path_url != "/api/health"]  # fmt: skip
    expected = {(s.url, server_id_of(s.url), 200) for s in (pair.a, pair.b)}
    figures.record(
        Figure(
            item="2 replay: the client signs for the server it is pointed at",
            runs=len(signed_for),
            errors=len(set(signed_for) - expected),
            details={"database": pair.database},
        )
    )
    assert set(signed_for) == expected, signed_for


def test_the_client_follows_a_new_server_at_the_same_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    """The server at the client's address is replaced (a new database: a new server id) while the client process
    runs: the client's first request is refused as signed for another server; it asks for the id again, signs for
    the new server and goes on, without the user doing anything."""
    lab = new_identity()
    old = start_server(tmp_path / "old")
    try:
        admin(old, "register-client", lab.client_id, "--label", "lab laptop")
        seen = act_as(monkeypatch, old, lab)
        kcl.set_mutable("@lab/where", "old server")
        old_id = seen[-1].request.headers[HEADER_SERVER_ID]
    finally:
        old.stop()
    new = start_server(tmp_path / "new", port=old.port)
    try:
        admin(new, "register-client", lab.client_id, "--label", "lab laptop")
        new_id = health(new)["server_id"]
        assert new_id != old_id  # same address, another server
        del seen[:]
        assert kcl.get_mutable("@lab/where") is None  # the new server's (empty) project, read without an error
        kcl.set_mutable("@lab/where", "new server")
        assert kcl.get_mutable("@lab/where") == "new server"
    finally:
        new.stop()
    sent = [response.request for response in seen]
    refused = [r for r in sent if r.headers.get(HEADER_SERVER_ID) == old_id]
    asked = [r for r in sent if r.path_url == "/api/health"]
    resigned = [r for r in sent if r.headers.get(HEADER_SERVER_ID) == new_id]
    answers = [answer(response) for response in seen]
    counts = [len(refused), len(asked), len(resigned)]
    figures.record(
        Figure(
            item="2 replay: the client follows a new server at its address",
            runs=len(sent),
            faults=1,
            errors=int(counts != [1, 1, 3] or answers[0] != (401, "wrong_server")),
            details={"signed for the old id": len(refused), "health asked": len(asked), "re-signed": len(resigned)},
        )
    )
    # One request signed for the old id (refused), one look at /api/health, then everything signed for the new one.
    assert counts == [1, 1, 3], [(r.method, r.path_url) for r in sent]
    assert answers == [(401, "wrong_server"), *[(200, None)] * 4], answers
