"""Two API server replicas behind a real haproxy, on one PostgreSQL database and one SeaweedFS bucket (DESIGN.md
section 8): stores and loads through the balancer reach both replicas, a feed follower on one replica is woken by
an append on the other, tasks requested through the balancer run exactly once on workers of different replicas,
a replica killed with kill -9 under load loses no acknowledged store, and the per-client rate limit is one count
for all replicas (Redis)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

import kachery_cloud as kcl
from kachery_cloud._connection import forget_clients
from kachery_cloud.protocol.uri import parse_uri

from ..conftest import CLOUD_TEST_SETTINGS
from ..helpers import copy_identity, signed_headers, switch_client
from ..servers import PostgresDatabases
from .replica_kit import Replicas, Workers, client_env, find_haproxy, read_acks, running_replicas, start_load

MIB = 1 << 20
SETTINGS = {**CLOUD_TEST_SETTINGS, "task_lease_sec": 5}
POLL_SEC = 28  # a follower's wait: under the server's 30 s long-poll limit, so it is one request
LOAD_CLIENTS = 4
LOAD_SEC = 8


def fresh_replicas(
    request: pytest.FixtureRequest, directory: Path, postgres: PostgresDatabases, **settings: Any
) -> Iterator[Replicas]:
    find_haproxy()  # skip (not Linux) or fail (not installed) before starting anything
    seaweedfs = request.getfixturevalue("seaweedfs")
    s3 = seaweedfs.s3_settings(f"kc-{secrets.token_hex(4)}")
    with running_replicas(directory, database_url=postgres.create(), s3=s3, settings=settings) as replicas:
        yield replicas


@pytest.fixture(scope="module")
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases
) -> Iterator[Replicas]:
    yield from fresh_replicas(request, tmp_path_factory.mktemp("replicas"), postgres, **SETTINGS)


@pytest.fixture
def member(pair: Replicas, kachery_dir: Path) -> Replicas:
    """This test's client directory registered through the balancer with an invitation (a replica's own owner
    token would prove nothing to the other replica)."""
    forget_clients()
    kcl.init(invite=pair.invite(), quiet=True)
    return pair


def use(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Talk to ``url`` (one replica's own address) instead of the balancer the client directory names."""
    monkeypatch.setenv("KACHERY_CLOUD_API_URL", url)
    forget_clients()


def test_stores_and_loads_through_the_balancer_reach_both_replicas(
    member: Replicas, kachery_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    balancer, first, second = member.balancer, member.servers[0], member.servers[1]
    assert yaml.safe_load((kachery_dir / "config.yaml").read_text())["api_url"] == member.url  # from the link
    files = []
    for i in range(3):
        (path := tmp_path / f"small{i}.txt").write_bytes(f"small file {i} {secrets.token_hex(4)}".encode())
        files.append(path)
    (big := tmp_path / "big.bin").write_bytes(os.urandom(7 * MIB + 5))  # multipart: parts of 5 MiB and 2 MiB
    files.append(big)

    uris = kcl.store_files(files)
    before = balancer.responses()  # from here on: loads only
    for round_number in range(3):  # fresh client directories: every load asks a replica, none hits a cache
        copy_identity(kachery_dir, tmp_path / f"reader{round_number}")
        (tmp_path / f"reader{round_number}" / "config.yaml").write_text(yaml.safe_dump({"api_url": member.url}))
        switch_client(monkeypatch, tmp_path / f"reader{round_number}", register=False)
        for uri, path in zip(uris, files, strict=True):
            loaded = kcl.load_file(uri)
            assert loaded is not None and Path(loaded).read_bytes() == path.read_bytes()
    after = balancer.responses()
    # The big file went up in parts: the server completed a multipart upload (its key ends in the upload id).
    s3, bucket = first.s3_client()
    sha1 = parse_uri(uris[-1]).sha1
    prefix = f"projects/default/sha1/{sha1[0:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}."
    assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0) == 1
    served = {name: after[name] - before[name] for name in member.names}
    print(f"load requests each replica served through the balancer: {served}")
    assert all(count > 0 for count in served.values()), served

    # Directly: what one replica stored, the other serves.
    use(monkeypatch, first.url)
    direct = kcl.store_text(f"stored through {first.url} {secrets.token_hex(4)}")
    copy_identity(kachery_dir, tmp_path / "direct-reader")
    switch_client(monkeypatch, tmp_path / "direct-reader", register=False)
    use(monkeypatch, second.url)
    assert (kcl.load_text(direct) or "").startswith(f"stored through {first.url}")
    loaded = kcl.load_file(uris[-1])
    assert loaded is not None and Path(loaded).read_bytes() == big.read_bytes()
    # Neither replica can have served the other's request: haproxy saw none of these.
    assert balancer.responses() == after


FOLLOWER = """
import json, sys, time
import kachery_cloud as kcl

feed = kcl.load_feed(sys.argv[1])
feed.set_position(int(sys.argv[2]))
print("following", flush=True)
started = time.monotonic()
batch = feed.get_next_messages(timeout_sec=float(sys.argv[3]))
print(json.dumps({"messages": batch, "waited": time.monotonic() - started}), flush=True)
"""


def test_a_follower_on_one_replica_is_woken_by_an_append_through_the_other(
    member: Replicas, kachery_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = kcl.create_feed()  # through the balancer
    script = tmp_path / "follow.py"
    script.write_text(FOLLOWER)
    for number, (waiting, appending) in enumerate([(0, 1), (1, 0)]):  # both directions
        follower_url, append_url = member.servers[waiting].url, member.servers[appending].url
        follower = subprocess.Popen(
            [sys.executable, str(script), feed.uri, str(number), str(POLL_SEC)],
            env=client_env(kachery_dir, follower_url),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert follower.stdout is not None and follower.stdout.readline() == "following\n"
            time.sleep(1)  # into its long-poll on its replica
            use(monkeypatch, append_url)
            assert kcl.load_feed(feed.uri).append_message({"via": append_url}) == number
            out, _ = follower.communicate(timeout=POLL_SEC + 30)
        finally:
            follower.kill()
            follower.wait()
        received = json.loads(out)
        assert received["messages"] == [{"via": append_url}]
        # One long-poll, with nothing in the feed when it began: the message ended it. Without a wake-up across
        # replicas it would have ended at its own timeout (the server does not poll), so this bound is about the
        # mechanism, not speed: woken, rather than timed out.
        assert received["waited"] < POLL_SEC / 2, received
    logs = "".join(server.log() for server in member.servers)
    assert "wake-up listener lost" not in logs


def test_tasks_requested_through_the_balancer_run_once_on_workers_of_both_replicas(
    member: Replicas, kachery_dir: Path, tmp_path: Path
) -> None:
    workers = Workers()
    logs = [tmp_path / f"runs-{name}.log" for name in member.names]
    try:
        for server, log in zip(member.servers, logs, strict=True):
            workers.start(client_env(kachery_dir, server.url), log)  # each claims from its own replica only
        stamp = time.time()
        inputs = [{"a": i, "b": stamp, "delay": 0.3} for i in range(10)]
        with ThreadPoolExecutor(len(inputs)) as pool:  # requesters wait through the balancer
            results = list(pool.map(lambda x: kcl.request_task("calculation", "test.add", x, timeout_sec=90), inputs))
    finally:
        workers.stop_all()
    assert results == [{"sum": x["a"] + stamp} for x in inputs]
    runs = {
        name: [json.loads(line.split(" ", 1)[1])["a"] for line in log.read_text().splitlines()] if log.exists() else []
        for name, log in zip(member.names, logs, strict=True)
    }
    print(f"tasks each replica's worker ran: {runs}")
    everything = sorted(a for ran in runs.values() for a in ran)
    assert everything == list(range(len(inputs)))  # every task exactly once, none twice, none lost
    assert all(runs.values()), runs  # claims were handed out by both replicas


@pytest.fixture
def replicas_to_kill(request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresDatabases) -> Iterator[Replicas]:
    yield from fresh_replicas(request, tmp_path / "replicas", postgres, **SETTINGS)


def test_a_replica_killed_under_load_loses_no_acknowledged_store(
    replicas_to_kill: Replicas, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replicas = replicas_to_kill
    victim, survivor = replicas.servers
    victim_name, survivor_name = replicas.names
    identities = replicas.register_clients(LOAD_CLIENTS + 1, f"load-{secrets.token_hex(3)}@example.org")
    clients = []
    for i, identity in enumerate(identities[:LOAD_CLIENTS]):
        env = client_env(tmp_path / f"load{i}" / "kc", replicas.url, **identity)
        clients.append(start_load(tmp_path / f"load{i}", env, LOAD_SEC, i))
    try:
        deadline = time.monotonic() + 60
        while not all(read_acks(c.acks) for c in clients):  # every client has stored through the balancer
            assert all(c.process.poll() is None for c in clients), [c.process.communicate() for c in clients]
            assert time.monotonic() < deadline, "the load clients stored nothing"
            time.sleep(0.1)
        time.sleep(3)  # a few hundred stores through both replicas first
        assert all(c.process.poll() is None for c in clients)  # the load is still running at the kill
        before_kill = replicas.balancer.responses()
        victim.process.kill()  # kill -9
        killed_at = time.time()
        assert victim.process.wait(timeout=30) == -9
        replicas.balancer.wait_for_status(victim_name, "DOWN")
        at_down = replicas.balancer.responses()
        outcomes = [c.process.communicate(timeout=LOAD_SEC + 120) for c in clients]
    finally:
        for c in clients:
            if c.process.poll() is None:
                c.process.kill()
                c.process.wait()
    assert [c.process.returncode for c in clients] == [0] * LOAD_CLIENTS, outcomes
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outcomes]
    end = replicas.balancer.responses()
    acks = [record for c in clients for record in read_acks(c.acks)]
    assert len({a["uri"] for a in acks}) == len(acks)  # distinct values: each URI stands for one store
    after_kill = sum(a["t"] > killed_at for a in acks)

    # Every acknowledged store, loaded back from the survivor's own address by a fresh client directory.
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "checker"))
    for name, value in identities[LOAD_CLIENTS].items():
        monkeypatch.setenv(name, value)
    use(monkeypatch, survivor.url)

    def lost(record: dict[str, Any]) -> bool:
        try:
            if record["kind"] == "json":
                return kcl.load_json(record["uri"]) != record["value"]
            path = kcl.load_file(record["uri"])
            return path is None or Path(path).read_bytes() != bytes.fromhex(record["hex"])
        except Exception as e:
            print(f"loading {record['uri']} failed: {e!r}")
            return True

    with ThreadPoolExecutor(8) as pool:
        losses = sum(pool.map(lost, acks))
    failed = sum(s["failed"] for s in summaries)
    print(
        f"kill -9 under load: {len(acks)} stores acknowledged ({after_kill} after the kill), {failed} failed "
        f"client calls, 1 kill, {losses} lost; responses through the balancer before the kill {before_kill}, "
        f"at DOWN {at_down}, at the end {end}"
    )
    for summary in summaries:
        if summary["errors"]:
            print(f"client errors: {summary['errors']}")
    assert losses == 0
    assert sum(s["acked"] for s in summaries) == len(acks)  # each returned call was recorded, once
    assert after_kill > 0  # the load went on after the kill ...
    assert end[survivor_name] > at_down[survivor_name]  # ... through the survivor
    assert end[victim_name] == at_down[victim_name]  # and haproxy sent nothing more to the dead one
    assert survivor.process.poll() is None


@pytest.fixture
def limited_replicas(request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresDatabases) -> Iterator[Replicas]:
    yield from fresh_replicas(request, tmp_path / "replicas", postgres, rate_limit_per_client="30/minute")


def test_the_per_client_rate_limit_is_one_count_across_replicas(limited_replicas: Replicas) -> None:
    from ..helpers import new_identity

    replicas = limited_replicas
    identity = new_identity()
    replicas.servers[0].admin("register-client", identity.client_id)
    statuses: dict[str, list[int]] = {name: [] for name in replicas.names}
    for i in range(40):  # alternately to each replica's own address, 20 each: under 30 on either alone
        name, server = replicas.names[i % 2], replicas.servers[i % 2]
        headers = signed_headers(identity, "GET", "/api/clients/me", server=server.url)
        statuses[name].append(requests.get(f"{server.url}/api/clients/me", headers=headers, timeout=30).status_code)
    answered = sorted(code for codes in statuses.values() for code in codes)
    print(f"statuses by replica: {statuses}")
    assert answered == [200] * 30 + [429] * 10  # one shared count of 30 a minute, not 30 per replica
    assert all(429 in codes for codes in statuses.values())
