"""The security issue's items 6, 7 and 11 against a real server on both stores (nanio + SQLite, SeaweedFS +
PostgreSQL; the parties of :mod:`.attack_kit`). 6: a quota counts everything a writer can make the server keep,
refuses each kind once full, and its counter equals a recount, after overwrites and deletes and under concurrent
writers. 7: a private project (its feeds, its tasks) is answered to non-members exactly as a missing one. 11: a
member who lost write access while uploading gets no more URLs, cannot complete, and does not keep it alive."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import secrets
import threading
import time
from typing import Any

import pytest
import requests

from kachery_cloud.identity import ClientIdentity

from ..helpers import new_identity
from .attack_kit import MIB, Party, World, admin, feed_append, send
from .conftest import Figure, Figures

SIGNATURE_BYTES = 128  # a feed message's signature: 128 hex digits, counted with its body
KINDS = ("blobs", "mutables", "feed_messages", "tasks")

# ------------------------------------------------------------------------------------------------ helpers


def call(
    w: World, method: str, target: str, payload: Any = None, signer: ClientIdentity | None = None
) -> requests.Response:
    """One API request, sent again after a 429 or 503 (as the client library does: both mean "not done, retry")."""
    for _ in range(30):
        response = send(w, method, target, payload, signer=signer)
        if response.status_code not in (429, 503):
            return response
        time.sleep(min(float(response.headers.get("Retry-After", "1")), 1.0))
    return response


def ok(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, f"{response.request.url}: {response.status_code} {response.text[:500]}"
    return response.json()


def answer(response: requests.Response) -> str:
    """``<status> <error_code>``; for a 200, ``200`` and the first result's status (blobs) or ``ok``."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.text[:100]}"
    if response.status_code != 200:
        return f"{response.status_code} {body.get('error_code')}"
    first = body["results"][0] if body.get("results") else {"status": "ok"}
    return f"200 {first.get('status', 'found' if first.get('found') else 'not found')}"


def usage(w: World, project: str) -> dict[str, Any]:
    """``kachery-cloud-server admin usage PROJECT --json``: the counter (stored_bytes) and a recount by kind."""
    return json.loads(admin(w.server, "usage", project, "--json"))


def assert_counted(w: World, project: str, expected: dict[str, int]) -> dict[str, Any]:
    """The server's recount by kind is what was written, and the quota's counter is that recount's sum."""
    report = usage(w, project)
    assert report["stored_bytes_by_kind"] == expected, (report, expected)
    assert report["stored_bytes"] == sum(expected.values()), report
    return report


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def new_project(w: World, quota: int | None = None) -> str:
    """A private project of the victim's, with the world's writer as a writer."""
    project = f"q-{secrets.token_hex(4)}"
    admin(w.server, "create-project", project, *(["--quota", str(quota)] if quota is not None else []))
    admin(w.server, "add-member", project, str(w.writer.email), "--role", "write")
    return project


def mutable(w: World, me: ClientIdentity, project: str, key: str, value: str) -> requests.Response:
    return call(w, "POST", "/api/mutables/set", {"project_id": project, "key": key, "value": value}, me)


def new_feed(w: World, me: ClientIdentity, project: str) -> str:
    return ok(call(w, "POST", "/api/feeds", {"project_id": project}, me))["feed_id"]


def append(w: World, me: ClientIdentity, feed_id: str, *messages: dict) -> tuple[requests.Response, int]:
    """An append of ``messages`` signed by ``me``, and the bytes they count (bodies and signatures)."""
    body = feed_append(feed_id, me, messages[0])
    body["messages"] += [feed_append(feed_id, me, m)["messages"][0] for m in messages[1:]]
    size = sum(len(m["body"]) + SIGNATURE_BYTES for m in body["messages"])
    return call(w, "POST", f"/api/feeds/{feed_id}/messages", body, me), size


def request_task(w: World, me: ClientIdentity, project: str, name: str, task_input: dict) -> requests.Response:
    body = {"project_id": project, "task_type": "calculation", "task_name": name, "task_input": task_input}
    return call(w, "POST", "/api/tasks/request", body, me)


def claim(w: World, me: ClientIdentity, project: str, name: str) -> dict[str, Any]:
    handlers = [{"task_type": "calculation", "task_name": name}]
    body = {"project_id": project, "handlers": handlers, "worker_id": secrets.token_hex(16), "wait_ms": 0}
    [task] = ok(call(w, "POST", "/api/tasks/claim", body, me))["tasks"]
    return task


def complete(w: World, me: ClientIdentity, project: str, task: dict, **outcome: str) -> requests.Response:
    body = {"project_id": project, "claim_id": task["claim_id"], **outcome}
    return call(w, "POST", f"/api/tasks/{task['task_id']}/complete", body, me)


def inline(w: World, me: ClientIdentity, project: str, data: bytes) -> requests.Response:
    blob = {"sha1": sha1(data), "data": base64.b64encode(data).decode()}
    return call(w, "POST", "/api/blobs/inline", {"project_id": project, "blobs": [blob]}, me)


def need(w: World, me: ClientIdentity, project: str, *blobs: dict[str, Any]) -> requests.Response:
    return call(w, "POST", "/api/blobs/need", {"project_id": project, "blobs": list(blobs)}, me)


def put_bytes(plan: dict[str, Any], data: bytes) -> list[dict[str, Any]] | None:
    """Send ``data`` as the upload instructions say; the parts to complete a multipart upload with."""
    if plan["method"] == "put":
        assert requests.put(plan["url"], data=data, headers=plan["headers"], timeout=60).status_code == 200
        return None
    parts, size = [], plan["part_size"]
    for n in range(1, plan["num_parts"] + 1):
        put = requests.put(plan["part_urls"][str(n)], data=data[(n - 1) * size : n * size], timeout=60)
        assert put.status_code == 200, put.text
        parts.append({"part_number": n, "etag": put.headers["ETag"]})
    return parts


def finish(w: World, me: ClientIdentity, plan: dict, parts: list | None) -> requests.Response:
    item = {"upload_id": plan["upload_id"], **({"parts": parts} if parts is not None else {})}
    return call(w, "POST", "/api/uploads/complete", {"uploads": [item]}, me)


# ------------------------------------------------------------------------------------------------ 6 quotas

FULL = "403 quota_exceeded"


def test_a_full_quota_refuses_every_kind_of_write(world: World, figures: Figures) -> None:
    """Old behaviour: only blobs were counted, so a 1000-byte project took 37.6 MiB of mutables and feed messages
    and ``admin usage`` showed 0. Now every kind is counted by its bytes and fills the quota to the byte; then the
    next write of each kind is refused with 403 quota_exceeded, and writes that free bytes still pass."""
    started, w, me = time.monotonic(), world, world.writer.identity
    quota, name = 8000, f"q.fit.{secrets.token_hex(3)}"
    project = new_project(w, quota)
    written = dict.fromkeys(KINDS, 0)
    key, value = "@q/notes", "v" * 100
    ok(mutable(w, me, project, key, value))
    written["mutables"] += len(key) + len(value)
    feed_id = new_feed(w, me, project)  # an empty feed is a row, not data the quota counts
    response, size = append(w, me, feed_id, {"epoch": 1, "loss": 0.25}, {"epoch": 2, "loss": 0.125})
    ok(response)
    written["feed_messages"] += size
    for n in (1, 2):  # the first finishes now, the second is completed once the quota is full
        ok(request_task(w, me, project, name, {"run": n}))
        written["tasks"] += len(canonical({"run": n}))
    result = canonical({"spikes": list(range(50))})
    ok(complete(w, me, project, claim(w, me, project, name), result_json=result))
    written["tasks"] += len(result)  # the copy on the task's row...
    written["blobs"] += len(result)  # ...and the result blob
    blob = os.urandom(700)
    assert answer(inline(w, me, project, blob)) == "200 stored"
    written["blobs"] += len(blob)
    late = os.urandom(300)  # its upload starts while it fits, and is completed once the quota is full
    [late_plan] = ok(need(w, me, project, {"sha1": sha1(late), "size": len(late)}))["results"]
    late_parts = put_bytes(late_plan, late)
    second = claim(w, me, project, name)
    report = assert_counted(w, project, written)
    assert all(report["stored_bytes_by_kind"][kind] > 0 for kind in KINDS), report
    left = quota - report["stored_bytes"]
    fill = "@q/fill"  # exactly the bytes left: a project may be full to the byte
    ok(mutable(w, me, project, fill, "f" * (left - len(fill))))
    written["mutables"] += left
    assert assert_counted(w, project, written)["stored_bytes"] == quota

    answers = {
        "new mutable": answer(mutable(w, me, project, "@q/more", "y")),
        "mutable one byte longer": answer(mutable(w, me, project, key, value + "v")),
        "feed message": answer(append(w, me, feed_id, {"epoch": 3})[0]),
        "task request": answer(request_task(w, me, project, name, {"run": 3})),
        "task result": answer(complete(w, me, project, second, result_json="1")),
        "inline blob": answer(inline(w, me, project, b"x")),
        "upload instructions": answer(need(w, me, project, {"sha1": sha1(b"y"), "size": 1})),
        # The presigned upload was let start while it fitted; its completion finds no room and records nothing.
        "upload completion": answer(finish(w, me, late_plan, late_parts)),
    }
    expected = dict.fromkeys(answers, FULL) | {"upload completion": "200 quota_exceeded"}
    assert_counted(w, project, written)  # nothing refused was kept
    got = ok(call(w, "POST", "/api/mutables/get", {"project_id": project, "key": key}, me))
    assert (got["value"], ok(call(w, "GET", f"/api/feeds/{feed_id}", signer=me))["num_messages"]) == (value, 2)

    # Writes that free bytes pass at a full quota, and what they free can be used again.
    ok(mutable(w, me, project, key, "short"))
    ok(call(w, "POST", "/api/mutables/delete", {"project_id": project, "key": fill}, me))
    written["mutables"] -= len(value) - len("short") + left - len(fill)  # the tombstone keeps its key counted
    ok(mutable(w, me, project, "@q/more", "y"))
    written["mutables"] += len("@q/more") + 1
    assert_counted(w, project, written)
    figures.record(
        Figure("6 quotas: every kind refused when full", runs=len(expected), seconds=time.monotonic() - started,
               errors=sum(answers[k] != v for k, v in expected.items()),
               details={"store": w.store, "quota": quota, "answers": answers})
    )  # fmt: skip
    assert answers == expected


def test_the_counter_equals_a_recount_after_writes_overwrites_and_deletes(
    world: World, figures: Figures, soak: bool
) -> None:
    """Old behaviour: the counter knew blobs only (and, later, charged task results by characters). Random writes,
    overwrites (longer and shorter, multi-byte UTF-8), deletes, folder deletes, re-set tombstones, retried appends,
    joined and re-run tasks, results that are not ASCII, duplicate blobs: after every ten steps the counter, the
    server's recount by kind and this test's own model agree to the byte."""
    started, w, me = time.monotonic(), world, world.writer.identity
    seed = int.from_bytes(os.urandom(4))  # in the figure, to replay a failure
    rng, runs = random.Random(seed), 240 if soak else 60
    project, name = new_project(w), f"q.mix.{secrets.token_hex(3)}"
    keys = [f"@a/k{i}" for i in range(4)] + [f"@b/@c/é{i}" for i in range(4)]  # é: 2 bytes, 1 character
    values: dict[str, str | None] = {}  # None: a tombstone (its key still counted)
    feed_id, feed_bytes, last_append = new_feed(w, me, project), 0, None
    tasks: dict[str, int] = {}  # task id -> bytes of its input and result
    blobs: dict[str, int] = {}
    ops = dict.fromkeys(("set", "delete", "delete-folder", "append", "retried append", "task", "blob"), 0)

    def model() -> dict[str, int]:
        live = sum(len(k.encode()) + len((v or "").encode()) for k, v in values.items())
        return {"blobs": sum(blobs.values()), "mutables": live, "feed_messages": feed_bytes,
                "tasks": sum(tasks.values())}  # fmt: skip

    for step in range(1, runs + 1):
        op = rng.choice(["set", "set", "set", "delete", "delete-folder", "append", "task", "task", "blob"])
        if op == "set":
            key = rng.choice(keys)
            values[key] = "".join(rng.choice("ab✓é𝄞") for _ in range(rng.randint(0, 120)))
            ok(mutable(w, me, project, key, values[key]))
        elif op == "delete":
            key = rng.choice(keys)
            ok(call(w, "POST", "/api/mutables/delete", {"project_id": project, "key": key}, me))
            if key in values:
                values[key] = None
        elif op == "delete-folder":
            folder = rng.choice(["@a", "@b", "@b/@c"])
            ok(call(w, "POST", "/api/mutables/delete-folder", {"project_id": project, "folder_key": folder}, me))
            values.update({k: None for k in values if k.startswith(folder + "/")})
        elif op == "append" and last_append is not None and rng.random() < 0.3:
            op = "retried append"  # the same append id again: a retry, kept and counted once
            assert ok(call(w, "POST", f"/api/feeds/{feed_id}/messages", last_append, me))["repeated"]
        elif op == "append":
            messages = [{"step": step, "n": n, "pad": "p" * rng.randint(0, 80)} for n in range(rng.randint(1, 3))]
            last_append = feed_append(feed_id, me, messages[0])
            last_append["messages"] += [feed_append(feed_id, me, m)["messages"][0] for m in messages[1:]]
            ok(call(w, "POST", f"/api/feeds/{feed_id}/messages", last_append, me))
            feed_bytes += sum(len(m["body"]) + SIGNATURE_BYTES for m in last_append["messages"])
        elif op == "task":
            task_input = {"n": rng.randint(0, 5)}  # often one asked for before: joined, not counted again
            status = ok(request_task(w, me, project, name, task_input))
            tasks.setdefault(status["task_id"], len(canonical(task_input)))
            if status["state"] == "pending":
                running = claim(w, me, project, name)
                if ops["task"] % 2 == 0:  # valid JSON, not ASCII-escaped: kept (and charged) as its UTF-8 bytes
                    text = "𝄞" + "".join(rng.choice("x✓𝄞") for _ in range(rng.randint(0, 60)))
                    result = json.dumps({"step": step, "r": text}, ensure_ascii=False).encode()
                    ok(complete(w, me, project, running, result_json=result.decode()))
                    tasks[running["task_id"]] += len(result)  # old behaviour: charged len(str), its characters
                    blobs[sha1(result)] = len(result)
                else:  # ends in error: asked for again, it runs again (its input counted once)
                    ok(complete(w, me, project, running, error="failed on purpose"))
        else:
            data = rng.choice([b"shared blob", os.urandom(rng.randint(1, 2000))])  # sometimes one kept already
            assert answer(inline(w, me, project, data)) == "200 stored"
            blobs[sha1(data)] = len(data)
        ops[op] += 1
        if step % 10 == 0:
            assert_counted(w, project, model())
    figures.record(
        Figure("6 quotas: counter equals recount", runs=runs, seconds=time.monotonic() - started,
               details={"store": w.store, "seed": seed, "recounts": runs // 10, "operations": ops,
                        "stored_bytes": sum(model().values())})
    )  # fmt: skip


def test_concurrent_writers_never_take_a_project_over_its_quota(world: World, figures: Figures, soak: bool) -> None:
    """Old behaviour: nothing but blobs was charged, so concurrent writers of mutables, feed messages and tasks were
    never stopped. The charge is one conditional UPDATE (``stored_bytes + delta <= quota``) in the transaction that
    writes the data, so the guarantee is exact: writers racing for the last bytes never take the project over its
    quota at all (not even by one item), every accepted write is counted, and a refusal means it did not fit."""
    started, w = time.monotonic(), world
    threads_per_kind, quota = (6, 200_000) if soak else (3, 24_000)
    project = new_project(w, quota)
    feed_id, name = new_feed(w, w.writer.identity, project), f"q.race.{secrets.token_hex(3)}"
    lock, accepted, sizes, refusals, unexpected = threading.Lock(), dict.fromkeys(KINDS, 0), {}, [0], []

    def write(kind: str, me: ClientIdentity, n: int) -> tuple[str, int]:
        tag = f"{me.client_id[:8]}-{n:05d}"  # every item of a kind has the same size
        if kind == "mutables":
            return answer(mutable(w, me, project, f"@race/{tag}", "m" * 200)), len(f"@race/{tag}") + 200
        if kind == "feed_messages":
            response, size = append(w, me, feed_id, {"pad": "f" * 150, "tag": tag})
            return answer(response), size
        if kind == "tasks":
            task_input = {"tag": tag, "pad": "t" * 120}
            return answer(request_task(w, me, project, name, task_input)), len(canonical(task_input))
        data = os.urandom(260)  # half inline, half presigned (need, PUT, complete): both charged when recorded
        if n % 2:
            return answer(inline(w, me, project, data)), len(data)
        asked = need(w, me, project, {"sha1": sha1(data), "size": len(data)})
        if asked.status_code != 200:
            return answer(asked), len(data)
        [plan] = asked.json()["results"]
        return answer(finish(w, me, plan, put_bytes(plan, data))), len(data)

    def writer(kind: str, me: ClientIdentity) -> None:
        for n in range(quota // 100):  # until refused: then the project had less room left than this item
            outcome, size = write(kind, me, n)
            with lock:
                sizes[kind] = size
                if outcome in ("200 ok", "200 stored"):
                    accepted[kind] += size
                    continue
                if outcome in (FULL, "200 quota_exceeded"):
                    refusals[0] += 1
                else:
                    unexpected.append(f"{kind}: {outcome}")
                return
        unexpected.append(f"{kind}: never refused")  # every item is over 100 bytes: the quota cannot hold this many

    threads = []
    for kind in KINDS:
        for _ in range(threads_per_kind):  # a client of its own per thread: rate limits are not the subject here
            me = new_identity()
            admin(w.server, "register-client", me.client_id, "--user", str(w.writer.email), "--label", "racer")
            threads.append(threading.Thread(target=writer, args=(kind, me)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    report = usage(w, project)
    stored = report["stored_bytes"]
    figures.record(
        Figure("6 quotas: concurrent writers", runs=len(threads), errors=len(unexpected) + (stored > quota),
               seconds=time.monotonic() - started,
               details={"store": w.store, "quota": quota, "stored_bytes": stored, "accepted bytes": accepted,
                        "item sizes": sizes, "refusals": refusals[0], "unexpected": unexpected[:10]})
    )  # fmt: skip
    assert not unexpected and not any(thread.is_alive() for thread in threads)
    assert stored <= quota, f"{stored} bytes stored, over the quota of {quota}"
    assert report["stored_bytes_by_kind"] == accepted and stored == sum(accepted.values()), (report, accepted)
    # Each thread stopped at a refusal, and the count only grew: at the end, no item of any kind still fitted.
    assert quota - stored < min(sizes.values()), f"refused with {quota - stored} bytes left"


# ------------------------------------------------------------------------------------------------ 7 existence

PROBES: list[tuple[str, str, Any]] = [
    ("GET", "/api/projects/<project>", None),
    ("GET", "/api/projects/<project>/usage", None),
    ("GET", "/api/tasks?project_id=<project>", None),
    ("GET", "/api/tasks/<task>?project_id=<project>", None),
    ("GET", "/api/feeds/<feed>", None),
    ("GET", "/api/feeds/<feed>/messages?start=0", None),
    ("POST", "/api/mutables/get", {"project_id": "<project>", "key": "@lab/latest"}),
    ("POST", "/api/mutables/list", {"project_id": "<project>", "folder_key": "@lab"}),
    ("POST", "/api/blobs/find", {"sha1s": ["<sha1>"], "project_id": "<project>"}),
    ("POST", "/api/tasks/request", {"project_id": "<project>", "task_type": "calculation", "task_name": "lab.fit",
                                    "task_input": {"run": 1}}),
    ("POST", "/api/mutables/set", {"project_id": "<project>", "key": "@lab/latest", "value": "x"}),
    ("POST", "/api/mutables/delete", {"project_id": "<project>", "key": "@lab/latest"}),
    ("POST", "/api/mutables/delete-folder", {"project_id": "<project>", "folder_key": "@lab"}),
    ("POST", "/api/feeds", {"project_id": "<project>"}),
    ("POST", "/api/feeds/<feed>/messages", "append"),
    ("POST", "/api/blobs/need", {"project_id": "<project>", "blobs": [{"sha1": "<sha1>", "size": 5}]}),
    ("POST", "/api/blobs/inline", {"project_id": "<project>", "blobs": [{"sha1": "<sha1>", "data": "bm90ZXM="}]}),
    ("POST", "/api/tasks/claim", {"project_id": "<project>", "worker_id": "a" * 32,
                                  "handlers": [{"task_type": "calculation", "task_name": "lab.fit"}]}),
    ("POST", "/api/tasks/heartbeat", {"project_id": "<project>", "claims": [{"task_id": "<task>",
                                                                             "claim_id": "c" * 32}]}),
    ("POST", "/api/tasks/<task>/cancel", {"project_id": "<project>"}),
    ("POST", "/api/tasks/<task>/complete", {"project_id": "<project>", "claim_id": "c" * 32, "result_json": "1"}),
    ("POST", "/api/tasks/release", {"project_id": "<project>", "worker_id": "a" * 32}),
]  # fmt: skip


def fill(template: Any, ids: dict[str, str]) -> Any:
    """``template`` (a path or a JSON body) with each ``<name>`` in it replaced by ``ids[name]``."""
    text = json.dumps(template)
    for name, value in ids.items():
        text = text.replace(f"<{name}>", value)
    return json.loads(text)


def seen(response: requests.Response, ids: dict[str, str]) -> tuple[int, str, str, tuple[str, ...]]:
    """What a caller learns from an answer, with the ids it asked about put back as ``<name>``: status, body,
    length and header names (the ids of every variant have the same lengths, so lengths must agree too)."""
    text = response.text
    for name, value in ids.items():
        text = text.replace(value, f"<{name}>")
    headers = tuple(sorted(h.lower() for h in response.headers if h.lower() != "date"))
    return response.status_code, text, response.headers.get("content-length", ""), headers


def test_a_private_project_is_answered_exactly_as_a_missing_one(world: World, figures: Figures) -> None:
    """Old behaviour: GET /api/projects/{id}, mutables/get, the anonymous task list and feeds answered 403 for an
    existing private project and 404 for a missing one, so anyone could tell which private projects exist. Now an
    outsider (a registered client of another user), an anonymous caller and an unregistered key get, from every
    route that names a project, feed or task, the same answer for a private one and for one that does not exist:
    status, error code, message (the id aside), length and headers."""
    started, w, owner = time.monotonic(), world, world.victim.identity
    tag, other = secrets.token_hex(4), secrets.token_hex(4)
    project = f"hidden-{tag}"  # a private project with data of every kind, named like the missing one below
    admin(w.server, "create-project", project)
    notes = b"notes"
    assert answer(inline(w, owner, project, notes)) == "200 stored"
    ok(mutable(w, owner, project, "@lab/latest", f"sha1://{sha1(notes)}"))
    feed_id = new_feed(w, owner, project)
    ok(append(w, owner, feed_id, {"epoch": 1})[0])
    task_id = ok(request_task(w, owner, project, "lab.fit", {"run": 1}))["task_id"]
    assert other != tag
    variants = [
        {"project": project, "feed": feed_id, "task": task_id},  # private
        {"project": f"hidden-{other}", "feed": secrets.token_hex(16), "task": secrets.token_hex(20)},  # missing
        {"project": project, "feed": secrets.token_hex(16), "task": secrets.token_hex(20)},  # missing in private
    ]
    callers = {"outsider": w.outsider.identity, "anonymous": None, "unregistered key": new_identity()}
    differ: list[str] = []
    answers: dict[str, dict[str, int]] = {}
    for who, signer in callers.items():
        for method, path, body in PROBES:
            got = []
            for ids in variants:
                if body == "append":  # the message signed by the caller (an anonymous one signs with any key)
                    payload = feed_append(ids["feed"], signer or new_identity(), {"intruder": who})
                else:
                    payload = fill(body, {**ids, "sha1": sha1(notes)})
                response = call(w, method, fill(path, ids), payload, signer)
                got.append(seen(response, ids))
                counts = answers.setdefault(who, {})
                counts[answer(response)] = counts.get(answer(response), 0) + 1
            if len(set(got)) != 1:
                differ.append(f"{who} {method} {path}: {got}")
            elif got[0][0] == 200 and path != "/api/blobs/find":  # find answers "not found" in a 200 for either
                differ.append(f"{who} {method} {path}: answered 200 {got[0][1][:200]}")
    figures.record(
        Figure("7 existence: private answered as missing", runs=len(callers) * len(PROBES) * len(variants),
               errors=len(differ), seconds=time.monotonic() - started,
               details={"store": w.store, "answers by caller": answers, "differing": differ[:5]})
    )  # fmt: skip
    assert not differ, "\n".join(differ)


# ------------------------------------------------------------------------------------------------ 11 removed member


def expiry(w: World, upload_id: str) -> int | None:
    """When the server will abort the upload (None: it is gone)."""
    from sqlalchemy import text

    with w.engine.connect() as conn:
        return conn.execute(text("SELECT expires_at_ms FROM uploads WHERE id = :id"), {"id": upload_id}).scalar()


CHANGES = {  # how the member loses write access, and what it is told afterwards
    "removed": ("default", ("remove-member",), "404 project_not_found"),  # private: as if it did not exist
    "made a reader": ("default", ("add-member", "--role", "read"), "403 insufficient_role"),
    "removed from a public project": (None, ("remove-member",), "403 not_a_member"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_member_who_lost_write_access_gets_no_more_upload_urls(world: World, figures: Figures, change: str) -> None:
    """Old behaviour: /api/uploads/{id}/urls did not check the caller's role again, and each call moved the upload's
    expiry a day on, so a removed member kept getting upload URLs (and kept its upload alive) for ever. Now, once
    the member lost write access, asking for more part URLs and completing are refused, and the expiry stays."""
    started, w = time.monotonic(), world
    project, command, expected = CHANGES[change]
    project = project or w.public_project
    member = Party("member", new_identity(), f"member-{secrets.token_hex(4)}@example.org")
    admin(w.server, "add-member", project, str(member.email), "--role", "write")
    admin(w.server, "register-client", member.client_id, "--user", str(member.email), "--label", "member")
    me, data = member.identity, os.urandom(2 * MIB)
    # A big upload (70 parts: the first answer has URLs for 64, the client asks for the rest as it goes), and one
    # over the tests' single-PUT limit (so multipart on both stores) whose bytes are sent before the change.
    big = {"sha1": secrets.token_hex(20), "size": 70 * 5 * MIB}
    big_plan, sent_plan = ok(need(w, me, project, big, {"sha1": sha1(data), "size": len(data)}))["results"]
    assert big_plan["method"] == "multipart" and len(big_plan["part_urls"]) == 64 < big_plan["num_parts"] == 70
    parts = put_bytes(sent_plan, data)
    big_urls, sent_urls = (f"/api/uploads/{plan['upload_id']}/urls" for plan in (big_plan, sent_plan))
    first = expiry(w, big_plan["upload_id"])
    time.sleep(0.05)
    # The control: while a member, more URLs come, and the call keeps the upload alive (so a renewal would show).
    assert sorted(ok(call(w, "POST", big_urls, {"part_numbers": [65, 66]}, me))["part_urls"]) == ["65", "66"]
    before = {"big": expiry(w, big_plan["upload_id"]), "sent": expiry(w, sent_plan["upload_id"])}
    assert first is not None and before["big"] is not None and before["big"] > first

    admin(w.server, command[0], project, str(member.email), *command[1:])
    time.sleep(0.05)  # so that a renewal now would move the expiry
    answers = {
        "more part URLs": answer(call(w, "POST", big_urls, {"part_numbers": [67, 68]}, me)),
        "the sent upload's URLs": answer(call(w, "POST", sent_urls, {"part_numbers": [1]}, me)),
        "completion": answer(finish(w, me, sent_plan, parts)),
    }
    after = {"big": expiry(w, big_plan["upload_id"]), "sent": expiry(w, sent_plan["upload_id"])}
    extended = [what for what in before if after[what] is not None and after[what] != before[what]]  # None: gone
    found = ok(call(w, "POST", "/api/blobs/find", {"sha1s": [sha1(data)]}, w.victim.identity))["results"]
    figures.record(
        Figure(f"11 removed member: {change}", runs=len(answers), seconds=time.monotonic() - started,
               errors=sum(a != expected for a in answers.values()) + len(extended) + found[0]["found"],
               details={"store": w.store, "answers": answers, "extended": extended})
    )  # fmt: skip
    assert answers == dict.fromkeys(answers, expected)
    assert not extended, (before, after)
    assert found == [{"sha1": sha1(data), "found": False}]  # nothing was recorded
