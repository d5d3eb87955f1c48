"""Item 7 of the reliability issue: hostile clients. A table of attacks, each run against a real server on both
stores (embedded nanio + SQLite, SeaweedFS + PostgreSQL; the parties and the checks are in :mod:`.attack_kit`).
Every attack must be refused, and must leave no trace in the data, and what the attacker is told must carry no
secret.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

import kachery_cloud as kcl
from kachery_cloud._connection import api_client
from kachery_cloud.api import blobs as blobs_api
from kachery_cloud.protocol.request_signing import (
    HEADER_CLIENT_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
)

from ..helpers import new_identity
from .attack_kit import (
    KIB,
    SMALL_UPLOAD,
    TWO_PART_UPLOAD,
    Captured,
    Observed,
    Party,
    Secrets,
    Trace,
    World,
    assert_not_findable,
    become,
    build,
    feed_append,
    send,
    sha1_b64,
    snapshot,
    trace_left,
)
from .conftest import Figure, Figures

# ------------------------------------------------------------------------------------------------ the attacks


def attack_forged_signature(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """Set the victim's mutable without its private key: signatures that do not verify for the claimed client."""
    target, key = "/api/mutables/set", w.private_key_name
    payload = {"project_id": "default", "key": key, "value": "sha1://" + "0" * 40}
    # What the attacker may have intercepted: the victim's headers for another request, never sent.
    seen = build("POST", target, {**payload, "value": "seen"}, to=w.url, signer=w.victim.identity)
    random_signature = secrets.token_hex(64)
    forged = build("POST", target, payload)  # unsigned bytes, with headers put together by the attacker
    obs.response(
        forged.send(w, **{**seen.headers, HEADER_SIGNATURE: random_signature}),
        401, "bad_signature", "random signature bytes for the victim's id",
    )  # fmt: skip
    obs.response(forged.send(w, **seen.headers), 401, "bad_signature", "the victim's signature of another body")
    for name, header, value in (
        ("fresh nonce", HEADER_NONCE, secrets.token_hex(16)),
        ("fresh timestamp", HEADER_TIMESTAMP, str(int(seen.headers[HEADER_TIMESTAMP]) + 1)),
    ):
        obs.response(seen.send(w, **{header: value}), 401, "bad_signature", f"a seen request with a {name}")
    moved = Captured("POST", "/api/mutables/delete", seen.body, seen.headers)
    obs.response(moved.send(w), 401, "bad_signature", "a seen signature moved to another path")
    flipped = seen.headers[HEADER_SIGNATURE]
    flipped = flipped[:10] + ("0" if flipped[10] != "0" else "1") + flipped[11:]
    obs.response(seen.send(w, **{HEADER_SIGNATURE: flipped}), 401, "bad_signature", "one signature digit changed")
    obs.response(
        seen.send(w, **{HEADER_SIGNATURE: "z" * 128}), 401, "malformed_signature", "a signature that is not hex"
    )


def attack_replayed_request(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """Send the victim's own requests again: a mutable set (which would undo a later change) and a feed creation
    (which would make a second feed)."""
    key = f"@lab/@replay/{secrets.token_hex(3)}"
    first = build("POST", "/api/mutables/set", {"project_id": "default", "key": key, "value": "first"},
                  to=w.url, signer=w.victim.identity)  # fmt: skip
    assert first.send(w).status_code == 200
    become(mp, w, w.victim)
    kcl.set_mutable(key, "second", project_id="default")
    create = build("POST", "/api/feeds", {"project_id": "default"}, to=w.url, signer=w.victim.identity)
    assert create.send(w).status_code == 200
    trace.checkpoint()  # the legitimate requests are data; only what follows is the attack
    obs.response(first.send(w), 401, "replayed_nonce", "the mutable set sent again")
    obs.response(create.send(w), 401, "replayed_nonce", "the feed creation sent again")
    assert kcl.get_mutable(key, project_id="default") == "second"


def attack_stale_timestamp(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """Requests properly signed by the victim's key, but at a time outside the server's window (an old captured
    request, a request prepared for later, a machine whose clock is off)."""
    now_ms = int(time.time() * 1000)
    payload = {"project_id": "default", "key": w.private_key_name, "value": "stale"}
    for offset_sec in (-120, 120, -86_400):
        request = build("POST", "/api/mutables/set", payload, to=w.url, signer=w.victim.identity,
                        timestamp_ms=now_ms + offset_sec * 1000)  # fmt: skip
        obs.response(request.send(w), 401, "stale_timestamp", f"timestamp {offset_sec:+d} s")
    feed = build("POST", "/api/feeds", {"project_id": "default"}, to=w.url, signer=w.victim.identity, timestamp_ms=0)
    obs.response(feed.send(w), 401, "stale_timestamp", "timestamp 0 (1970)")


def attack_another_clients_id(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """A registered client signs with its own key while claiming another registered client's id; and uses what
    belongs to another client: the victim's feed-message signature, the victim's upload in progress."""
    outsider, victim, writer = w.outsider.identity, w.victim.identity, w.writer.identity
    text = b"written under the victim's name"
    for what, method, target, payload, claimed in (
        ("mutable set as the victim", "POST", "/api/mutables/set",
         {"project_id": "default", "key": w.private_key_name, "value": "hijacked"}, victim),
        ("inline blob as the victim", "POST", "/api/blobs/inline",
         {"project_id": "default", "blobs": [{"sha1": hashlib.sha1(text).hexdigest(),
                                              "data": base64.b64encode(text).decode()}]}, victim),
        ("feed append as the victim", "POST", f"/api/feeds/{w.private_feed_id}/messages",
         feed_append(w.private_feed_id, outsider, {"forged": True}), victim),
        ("upload instructions as the writer", "POST", "/api/blobs/need",
         {"project_id": "default", "blobs": [{"sha1": hashlib.sha1(text).hexdigest(), "size": len(text)}]}, writer),
        ("task request as the writer", "POST", "/api/tasks/request",
         {"project_id": "default", "task_type": "calculation", "task_name": "lab.evil", "task_input": {}}, writer),
    ):  # fmt: skip
        request = build(method, target, payload, to=w.url, signer=outsider, client_id=claimed.client_id)
        obs.response(request.send(w), 401, "bad_signature", what)
    # A fresh key, unknown to the server, claiming the victim's id fares no better.
    request = build(
        "POST", "/api/feeds", {"project_id": "default"}, to=w.url, signer=new_identity(), client_id=victim.client_id
    )
    obs.response(request.send(w), 401, "bad_signature", "an unknown key claiming the victim's id")

    # The victim's signed feed message, appended by the writer (a member with write access) as its own.
    become(mp, w, w.victim)
    [stored] = api_client().call("GET", f"/api/feeds/{w.private_feed_id}/messages?start=0&limit=1")["messages"]
    copied = {
        "append_id": secrets.token_hex(16),
        "messages": [{"body": stored["body"], "signature": stored["signature"]}],
    }
    request = build("POST", f"/api/feeds/{w.private_feed_id}/messages", copied, to=w.url, signer=writer)
    obs.response(request.send(w), 400, "bad_message_signature", "the victim's feed message appended by the writer")

    # The victim's upload in progress, completed or renewed by the writer.
    data = os.urandom(SMALL_UPLOAD)
    [plan] = blobs_api.need(api_client(), "default", [(hashlib.sha1(data).hexdigest(), len(data))])
    trace.checkpoint()
    become(mp, w, w.writer)
    obs.raises(kcl.ServerError, lambda: blobs_api.upload_urls(api_client(), plan, [1]),
               "the victim's upload URLs asked for by the writer", code="upload_not_found")  # fmt: skip
    [result] = blobs_api.complete(api_client(), [(plan, None if plan.method == "put" else [(1, '"x"')])])
    assert result.status == "not_found", result
    obs.note(f"the victim's upload completed by the writer: {result.status}")


def _try_every_write(w: World, obs: Observed, mp: pytest.MonkeyPatch, party: Party, code: str) -> None:
    """Every kind of write into the private project ``default``, as ``party``; each refused with ``code`` (a
    non-member: ``project_not_found``, as if the project did not exist; a feed append then ``feed_not_found``)."""
    become(mp, w, party)
    error: type[Exception] = {
        "client_not_registered": kcl.NotRegisteredError,
        "project_not_found": kcl.ServerError,
    }.get(code, kcl.PermissionDeniedError)
    mp.setenv("KACHERY_CLOUD_PROJECT", "default")
    big = Path(os.environ["KACHERY_CLOUD_DIR"]).parent / f"{party.name}-upload.bin"
    big.write_bytes(os.urandom(SMALL_UPLOAD))
    for what, call in (
        ("store_text (inline)", lambda: kcl.store_text(f"{party.name} was here")),
        ("store_file (presigned upload)", lambda: kcl.store_file(str(big))),
        ("set_mutable", lambda: kcl.set_mutable(w.private_key_name, "overwritten", project_id="default")),
        ("delete_mutable", lambda: kcl.delete_mutable(w.private_key_name, project_id="default")),
        ("delete_mutable_folder", lambda: kcl.delete_mutable_folder("@lab", project_id="default")),
        ("create_feed", lambda: kcl.create_feed(project_id="default")),
        ("request_task (action)", lambda: kcl.request_task("action", "lab.evil", {}, 0, project_id="default")),
        ("cancel_task", lambda: kcl.TaskClient("default").cancel_task(w.private_task_id)),
    ):
        obs.raises(error, call, what, code)
    status = {"client_not_registered": 401, "project_not_found": 404}.get(code, 403)
    for what, target, payload in (
        ("feed append", f"/api/feeds/{w.private_feed_id}/messages",
         feed_append(w.private_feed_id, party.identity, {"intruder": party.name})),
        ("task claim", "/api/tasks/claim",
         {"project_id": "default", "handlers": [{"task_type": "calculation", "task_name": "lab.fit"}],
          "worker_id": secrets.token_hex(16)}),
        ("task completion", f"/api/tasks/{w.private_task_id}/complete",
         {"project_id": "default", "claim_id": secrets.token_hex(16), "result_json": "42"}),
        ("mutable set with compare-and-swap", "/api/mutables/set",
         {"project_id": "default", "key": w.private_key_name, "value": "x", "expected_version": 1}),
    ):  # fmt: skip
        expected = "feed_not_found" if code == "project_not_found" and what == "feed append" else code
        obs.response(send(w, "POST", target, payload, signer=party.identity), status, expected, what)


def attack_write_without_membership(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """A registered client of another user (no member of the private project) writes into it; so does a key
    the server has never seen."""
    _try_every_write(w, obs, mp, w.outsider, "project_not_found")
    stranger = Party("stranger", new_identity(), None)
    _try_every_write(w, obs, mp, stranger, "client_not_registered")


def attack_write_with_read_role(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """A member with the read role writes into the project."""
    _try_every_write(w, obs, mp, w.reader, "insufficient_role")


# Write routes whose path mentions people, roles or access: none may exist in the API.
_ROLE_WORDS = re.compile(r"member|role|admin|owner|user|permission|grant|invite|share|access", re.IGNORECASE)


def attack_member_grants_itself_admin(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """A member with the write role tries to make itself admin of the project.

    The API has no route that changes memberships or roles: they are changed only by ``kachery-cloud-server admin
    add-member/remove-member`` on the server machine, which writes to the database directly. So the attack is
    (1) looking in the server's own OpenAPI document for any write route about members, roles or access: there
    is none; (2) trying, signed by the member, every route such an API would plausibly have: each is 404 or 405;
    (3) sending role fields to the one route that answers about the client's memberships (registration): they
    are ignored. The member's role stays ``write`` and the memberships table does not change.
    """
    spec = requests.get(f"{w.url}/openapi.json", timeout=30).json()
    writes = sorted(
        f"{method.upper()} {path}"
        for path, operations in spec["paths"].items()
        for method in operations
        if method in ("post", "put", "patch", "delete")
    )
    assert writes, "the OpenAPI document lists no write route at all"
    assert not [route for route in writes if _ROLE_WORDS.search(route)], writes
    obs.note(f"OpenAPI: none of {len(writes)} write routes is about members or roles")
    me, email = w.writer, w.writer.email
    grant = {"project_id": "default", "user": email, "email": email, "role": "admin"}
    for method, target in (
        ("POST", "/api/projects/default/members"),
        ("PUT", f"/api/projects/default/members/{email}"),
        ("PATCH", f"/api/projects/default/members/{email}"),
        ("POST", "/api/projects/default/roles"),
        ("PUT", "/api/projects/default"),
        ("PATCH", "/api/projects/default"),
        ("POST", "/api/projects/default"),
        ("DELETE", "/api/projects/default"),
        ("POST", "/api/projects"),
        ("POST", "/api/memberships"),
        ("POST", "/api/admin/add-member"),
        ("PUT", "/api/clients/me"),
        ("PATCH", "/api/clients/me"),
        ("POST", "/api/users/me"),
        ("POST", "/"),  # the HTML pages are not in the OpenAPI document; they only answer GET
        ("POST", "/register/anything"),
    ):
        response = send(w, method, target, grant, signer=me.identity)
        expected = {404: "not_found", 405: "method_not_allowed"}
        assert response.status_code in expected, f"{method} {target}: {response.status_code} {response.text}"
        obs.response(response, response.status_code, expected[response.status_code], f"{method} {target}")
    extra = {"label": "", "role": "admin", "projects": [{"project_id": "default", "role": "admin"}]}
    answer = send(w, "POST", "/api/clients/register", extra, signer=me.identity)
    assert answer.status_code == 200, answer.text
    roles = {p["project_id"]: p["role"] for p in answer.json()["client"]["projects"]}
    assert roles["default"] == "write", roles
    obs.note("POST /api/clients/register with role fields: ignored, role stays write")
    become(mp, w, me)
    roles = {p["project_id"]: p["role"] for p in kcl.get_client_info()["projects"]}
    assert roles["default"] == "write", roles


def attack_presigned_url_for_a_writes_b(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """A writer gets upload instructions for blobs A and B, sends B's bytes with A's URL (and A's with B's), then
    asks the server to complete both: neither A nor B may be recorded, and A must not be served with B's bytes."""
    a, b = os.urandom(SMALL_UPLOAD), os.urandom(SMALL_UPLOAD)
    sha_a, sha_b = hashlib.sha1(a).hexdigest(), hashlib.sha1(b).hexdigest()
    become(mp, w, w.writer)
    api = api_client()
    plan_a, plan_b = blobs_api.need(api, "default", [(sha_a, len(a)), (sha_b, len(b))])
    assert plan_a.method == plan_b.method
    trace.checkpoint()  # asking for instructions is what any writer does; the attack starts here
    if plan_a.method == "put":  # the store checks the signed x-amz-checksum-sha1
        obs.store_refused(requests.put(plan_a.url, data=b, headers=plan_a.headers, timeout=30), (400,),
                          "B's bytes with A's URL and A's checksum header")  # fmt: skip
        obs.store_refused(
            requests.put(plan_a.url, data=b, headers={"x-amz-checksum-sha1": sha1_b64(b)}, timeout=30), (400, 403),
            "B's bytes with A's URL and B's checksum header",
        )  # fmt: skip
        obs.store_refused(requests.put(plan_a.url, data=b, timeout=30), (400, 403),
                          "B's bytes with A's URL and no checksum header")  # fmt: skip
        obs.store_refused(requests.put(plan_b.url, data=a, headers=plan_b.headers, timeout=30), (400,),
                          "A's bytes with B's URL")  # fmt: skip
        parts_a = parts_b = None
        refused = "not_uploaded"
    else:  # parts carry no checksum: the store takes them, the server's re-hash at completion refuses them
        put_ab = requests.put(plan_a.part_urls[1], data=b, timeout=30)
        put_ba = requests.put(plan_b.part_urls[1], data=a, timeout=30)
        assert put_ab.status_code == put_ba.status_code == 200, (put_ab.text, put_ba.text)
        parts_a, parts_b = [(1, put_ab.headers["ETag"])], [(1, put_ba.headers["ETag"])]
        refused = "mismatch"
    obs.store_refused(requests.put(plan_a.url or plan_a.part_urls[1], data=b + b"!", headers=plan_a.headers,
                                   timeout=30), (400, 403), "B's bytes plus one with A's URL")  # fmt: skip
    results = blobs_api.complete(api, [(plan_a, parts_a), (plan_b, parts_b)])
    assert [r.status for r in results] == [refused, refused], results
    obs.note(f"completion of A and of B: {refused}")
    obs.texts += [r.message for r in results]
    assert_not_findable(w, mp, [sha_a, sha_b])


def attack_content_not_matching_hash(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """A writer sends bytes that do not have the SHA-1 it claims: with a presigned PUT, with multipart parts (one
    part wrong), and inline in the API request (including a claim to the victim's existing blob)."""
    claimed, sent = os.urandom(SMALL_UPLOAD), os.urandom(SMALL_UPLOAD)
    big = bytearray(os.urandom(TWO_PART_UPLOAD))
    big_sha1 = hashlib.sha1(big).hexdigest()
    become(mp, w, w.writer)
    api = api_client()
    small_sha1 = hashlib.sha1(claimed).hexdigest()
    small, multi = blobs_api.need(api, "default", [(small_sha1, len(claimed)), (big_sha1, len(big))])
    assert multi.method == "multipart" and multi.num_parts == 2
    trace.checkpoint()
    if small.method == "put":
        obs.store_refused(requests.put(small.url, data=sent, headers=small.headers, timeout=30), (400,),
                          "a single PUT of other bytes")  # fmt: skip
        small_parts, small_refused = None, "not_uploaded"
    else:
        put = requests.put(small.part_urls[1], data=sent, timeout=30)
        assert put.status_code == 200, put.text
        small_parts, small_refused = [(1, put.headers["ETag"])], "mismatch"
    big[-1] ^= 0xFF  # the second part is one byte off
    parts = []
    for n in (1, 2):
        start, length = multi.part_range(n)
        put = requests.put(multi.part_urls[n], data=bytes(big[start : start + length]), timeout=30)
        assert put.status_code == 200, put.text
        parts.append((n, put.headers["ETag"]))
    results = blobs_api.complete(api, [(small, small_parts), (multi, parts)])
    assert [r.status for r in results] == [small_refused, "mismatch"], results
    obs.note(f"presigned upload of other bytes: {small_refused}; multipart with one wrong byte: mismatch")
    obs.texts += [r.message for r in results]
    victim_sha1 = w.private_uri.split("//")[1].split("?")[0]
    inline = {
        "project_id": "default",
        "blobs": [
            {"sha1": small_sha1, "data": base64.b64encode(sent[: 32 * KIB]).decode()},
            {"sha1": victim_sha1, "data": base64.b64encode(b"not the victim's notes").decode()},
        ],
    }
    response = send(w, "POST", "/api/blobs/inline", inline, signer=w.writer.identity)
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["mismatch", "mismatch"], response.text
    obs.note("inline blobs whose bytes are not their SHA-1 (one claiming the victim's blob): mismatch")
    obs.texts += [r["message"] for r in response.json()["results"]]
    assert_not_findable(w, mp, [small_sha1, big_sha1])
    assert (kcl.load_text(w.private_uri) or "").startswith("private lab notes")  # the victim's blob is intact


def attack_ephemeral_client_writing(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """An ephemeral client (no key, KACHERY_CLOUD_EPHEMERAL=1) writes into a public project, which it may read:
    through the client library, then with raw unsigned requests to every write route."""
    project = w.public_project
    become(mp, w, None)
    assert kcl.get_mutable(w.public_key_name, project_id=project) == w.public_uri  # it can read
    feed = kcl.load_feed(f"kachery-feed://{w.public_feed_id}")
    mp.setenv("KACHERY_CLOUD_PROJECT", project)
    for what, call in (
        ("store_text", lambda: kcl.store_text("ephemeral graffiti")),
        ("store_json", lambda: kcl.store_json({"graffiti": True})),
        ("set_mutable", lambda: kcl.set_mutable(w.public_key_name, "graffiti", project_id=project)),
        ("delete_mutable", lambda: kcl.delete_mutable(w.public_key_name, project_id=project)),
        ("create_feed", lambda: kcl.create_feed(project_id=project)),
        ("append_message", lambda: feed.append_message({"graffiti": True})),
    ):
        obs.raises(kcl.EphemeralModeError, call, what)
    for what, task_type in (("request_task (calculation)", "calculation"), ("request_task (action)", "action")):
        obs.raises(kcl.PermissionDeniedError,
                   lambda t=task_type: kcl.request_task(t, "lab.graffiti", {"x": 1}, 0, project_id=project),
                   what, "permission_denied")  # fmt: skip
    # The same writes without the client library: unsigned HTTP.
    blob = b"unsigned graffiti"
    blob_ref = {"sha1": hashlib.sha1(blob).hexdigest(), "size": len(blob)}
    handlers = [{"task_type": "calculation", "task_name": "lab.fit"}]
    for target, payload, status, code in (
        ("/api/blobs/need", {"project_id": project, "blobs": [blob_ref]}, 401, "missing_signature"),
        ("/api/blobs/inline", {"project_id": project, "blobs": [{"sha1": blob_ref["sha1"],
                                                                 "data": base64.b64encode(blob).decode()}]},
         401, "missing_signature"),
        ("/api/uploads/complete", {"uploads": [{"upload_id": "u" * 32}]}, 401, "missing_signature"),
        (f"/api/uploads/{'u' * 32}/urls", {"part_numbers": [1]}, 401, "missing_signature"),
        ("/api/mutables/set", {"project_id": project, "key": w.public_key_name, "value": "x"}, 401,
         "missing_signature"),
        ("/api/mutables/delete", {"project_id": project, "key": w.public_key_name}, 401, "missing_signature"),
        ("/api/mutables/delete-folder", {"project_id": project, "folder_key": "@lab"}, 401, "missing_signature"),
        ("/api/feeds", {"project_id": project}, 401, "missing_signature"),
        (f"/api/feeds/{w.public_feed_id}/messages", feed_append(w.public_feed_id, new_identity(), {"x": 1}), 401,
         "missing_signature"),
        ("/api/tasks/request", {"project_id": project, "task_type": "calculation", "task_name": "lab.graffiti",
                                "task_input": {}}, 403, "permission_denied"),
        ("/api/tasks/request", {"project_id": project, "task_type": "action", "task_name": "lab.graffiti",
                                "task_input": {}, "request_id": secrets.token_hex(16)}, 403, "permission_denied"),
        ("/api/tasks/claim", {"project_id": project, "handlers": handlers, "worker_id": secrets.token_hex(16)}, 401,
         "missing_signature"),
        ("/api/tasks/heartbeat", {"project_id": project, "claims": [{"task_id": w.public_task_id,
                                                                     "claim_id": "c" * 32}]},
         401, "missing_signature"),
        (f"/api/tasks/{w.public_task_id}/complete", {"project_id": project, "claim_id": "c" * 32,
                                                     "result_json": "1"}, 401, "missing_signature"),
        (f"/api/tasks/{w.public_task_id}/cancel", {"project_id": project}, 401, "missing_signature"),
        ("/api/tasks/release", {"project_id": project, "worker_id": secrets.token_hex(16)}, 401,
         "missing_signature"),
        ("/api/clients/register", {"label": "ephemeral"}, 401, "missing_signature"),
    ):  # fmt: skip
        obs.response(send(w, "POST", target, payload), status, code, f"unsigned POST {target}")


def attack_private_read_without_membership(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """A registered client of another user reads the private project: blobs, mutables, feeds, tasks. Content it
    cannot read is reported as not found (so it does not even learn that it exists)."""
    become(mp, w, w.outsider)
    sha1 = w.private_uri.split("//")[1].split("?")[0]
    assert kcl.load_text(w.private_uri) is None
    assert kcl.load_file_info(w.private_uri) is None
    obs.note("load_text, load_file_info: None (not found)")
    obs.raises(kcl.NotFoundError, lambda: kcl.load_bytes(w.private_uri, 0, 4), "load_bytes")
    obs.raises(kcl.NotFoundError, lambda: kcl.cat_file(w.private_uri), "cat_file")
    found, _ = blobs_api.find(api_client(), [sha1], "default")
    assert not found
    obs.note("find naming the project: not found, no URL")
    for what, call in (
        ("get_mutable", lambda: kcl.get_mutable(w.private_key_name, project_id="default")),
        ("list_mutables", lambda: kcl.list_mutables("@lab", project_id="default")),
        ("load_feed", lambda: kcl.load_feed(f"kachery-feed://{w.private_feed_id}")),
        ("list_tasks", lambda: kcl.TaskClient("default").list_tasks()),
        ("get_task_status", lambda: kcl.TaskClient("default").get_task_status(w.private_task_id)),
        ("request_task of an existing calculation",
         lambda: kcl.request_task("calculation", "lab.fit", {"run": "private"}, 0, project_id="default")),
    ):  # fmt: skip
        code = "feed_not_found" if what == "load_feed" else "project_not_found"
        obs.raises(kcl.ServerError, call, what, code)
    for target in (
        "/api/projects/default",
        "/api/projects/default/usage",
        f"/api/feeds/{w.private_feed_id}/messages?start=0",
        "/api/tasks?project_id=default",
    ):
        code = "feed_not_found" if "/feeds/" in target else "project_not_found"
        obs.response(send(w, "GET", target, signer=w.outsider.identity), 404, code, f"GET {target}")
    # Unsigned (anonymous) and signed-but-unregistered readers are refused as well.
    obs.response(send(w, "GET", "/api/projects/default"), 404, "project_not_found",
                 "anonymous GET /api/projects/default")  # fmt: skip
    body = {"project_id": "default", "key": w.private_key_name}
    obs.response(send(w, "POST", "/api/mutables/get", body, signer=new_identity()), 401, "client_not_registered",
                 "unregistered key: POST /api/mutables/get")  # fmt: skip
    anonymous = send(w, "POST", "/api/blobs/find", {"sha1s": [sha1], "project_id": "default"})
    assert anonymous.status_code == 200 and anonymous.json()["results"] == [{"sha1": sha1, "found": False}]
    obs.note("anonymous find: not found")


def attack_registration_without_private_key(w: World, obs: Observed, trace: Trace, mp: pytest.MonkeyPatch) -> None:
    """Register a client id whose private key the attacker does not have: a fresh key someone published, and the
    writer's registered id (to take it over); signed with the attacker's key, or not signed at all."""
    attacker, someone = new_identity(), new_identity()
    for what, claimed in (("a fresh public key", someone.client_id), ("the writer's id", w.writer.client_id)):
        request = build(
            "POST", "/api/clients/register", {"label": "stolen"}, to=w.url, signer=attacker, client_id=claimed
        )
        obs.response(request.send(w), 401, "bad_signature", f"registration of {what}")
    obs.response(send(w, "POST", "/api/clients/register", {"label": "stolen"}), 401, "missing_signature",
                 "unsigned registration")  # fmt: skip
    partial = build("POST", "/api/clients/register", {"label": "stolen"})
    obs.response(partial.send(w, **{HEADER_CLIENT_ID: someone.client_id}), 401, "missing_signature",
                 "registration with only a client id header")  # fmt: skip
    # The fresh key's own signature over another body, with the body changed on the way.
    signed = build("POST", "/api/clients/register", {"label": "mine"}, to=w.url, signer=someone)
    altered = Captured(signed.method, signed.target, b'{"label":"stolen"}', signed.headers)
    obs.response(altered.send(w), 401, "bad_signature", "a registration whose body was changed on the way")


Attack = Callable[[World, Observed, Trace, pytest.MonkeyPatch], None]

ATTACKS: dict[str, Attack] = {
    "forged-signature": attack_forged_signature,
    "replayed-request": attack_replayed_request,
    "stale-timestamp": attack_stale_timestamp,
    "another-clients-id": attack_another_clients_id,
    "write-without-membership": attack_write_without_membership,
    "write-with-read-role": attack_write_with_read_role,
    "member-grants-itself-admin": attack_member_grants_itself_admin,
    "presigned-url-for-a-writes-b": attack_presigned_url_for_a_writes_b,
    "content-not-matching-hash": attack_content_not_matching_hash,
    "ephemeral-client-writing": attack_ephemeral_client_writing,
    "private-read-without-membership": attack_private_read_without_membership,
    "registration-without-private-key": attack_registration_without_private_key,
}


# ------------------------------------------------------------------------------------------------ the tests


@dataclass
class Tally:
    """Which attacks ran on one server, and which of them were refused without a trace."""

    ran: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def tally(world: World, figures: Figures) -> Iterator[Tally]:
    t = Tally()
    yield t
    failed = [name for name in t.ran if name not in t.passed]
    figures.record(
        Figure(
            item="7 hostile clients: attack table",
            runs=len(t.ran),
            errors=len(failed),
            details={"store": world.store, "refusals per attack": t.refusals, "not refused or left a trace": failed},
        )
    )


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_is_refused_and_leaves_no_trace(
    attack: str, world: World, tally: Tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    tally.ran.append(attack)
    obs = Observed()
    trace = Trace(world)
    ATTACKS[attack](world, obs, trace, monkeypatch)
    changes = trace_left(trace.before, snapshot(world))
    assert not changes, f"{attack} left a trace:\n" + "\n".join(changes)
    # What the attacker was told must not carry anything secret either.
    known = Secrets()
    for party in (world.victim, world.writer, world.reader, world.outsider):
        known.add_private_key(party.identity)
    known.add_s3_secret(world.server)
    leaks = known.leaks({f"error text {i}": text for i, text in enumerate(obs.texts)})
    assert not leaks, leaks
    tally.refusals[attack] = len(obs.refusals)
    tally.passed.append(attack)


def test_the_trace_check_sees_a_legitimate_write(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same snapshot comparison, around writes the server accepts, does report each of them (so
    an attack that got through would not go unnoticed)."""
    trace = Trace(world)
    become(monkeypatch, world, world.writer)
    accepted = Path(os.environ["KACHERY_CLOUD_DIR"]).parent / "accepted.bin"
    accepted.write_bytes(os.urandom(SMALL_UPLOAD))
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", "default")
    sha1 = kcl.store_file(str(accepted)).split("//")[1].split("?")[0]
    kcl.store_text(f"accepted {secrets.token_hex(4)}")
    kcl.set_mutable(f"@accepted/{secrets.token_hex(3)}", "yes")
    kcl.create_feed().append_message({"accepted": True})
    task = {"project_id": "default", "task_type": "calculation", "task_name": "lab.fit", "task_input": {"n": 2}}
    api_client().call("POST", "/api/tasks/request", json_body=task)
    changes = trace_left(trace.before, snapshot(world))
    for expected in ("new or rewritten object", "blobs: new row", "mutables: new row", "feeds: new row",
                     "feed_messages: new row", "tasks: new row"):  # fmt: skip
        assert any(change.startswith(expected) for change in changes), (expected, changes)
    assert any(sha1 in change for change in changes)
