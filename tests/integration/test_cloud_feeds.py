"""Feeds through a real API server, on SQLite and on PostgreSQL: round trips, signatures, limits, gapless numbering
under 8 appending processes, long-poll followers (across two replicas on PostgreSQL), permissions, a server
restart, and the CLI."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kachery_cloud as kcl
from kachery_cloud._connection import api_client
from kachery_cloud.protocol.feed_format import MAX_MESSAGE_BYTES, MAX_MESSAGES_PER_APPEND, signed_bytes

from ..helpers import BIN, act_as, run_cli, switch_client
from ..servers import PostgresDatabases, RunningServer, start_server


def test_create_append_load_and_read_back(registered: RunningServer) -> None:
    feed = kcl.create_feed()
    assert feed.uri == f"kachery-feed://{feed.feed_id}" and feed.project_id == "default"
    assert feed.append_message({"message": 1}) == 0
    assert feed.append_messages([{"message": 2}, {"message": 3}]) == [1, 2]
    assert feed.append_messages([]) == []

    reader = kcl.load_feed(feed.uri)
    assert reader.current_message_number == 0
    assert reader.get_next_messages() == [{"message": 1}, {"message": 2}, {"message": 3}]
    assert reader.current_message_number == 3
    assert reader.get_next_messages() == []
    assert reader.get_num_messages() == 3
    assert reader.get_messages(1, 2) == [{"message": 2}]
    assert reader.get_messages(2) == [{"message": 3}]
    assert reader.get_messages(1, 100) == [{"message": 2}, {"message": 3}]  # like a slice
    reader.set_position(1)
    assert reader.get_next_messages(max_messages=1) == [{"message": 2}]
    assert reader.current_message_number == 2
    assert kcl.load_feed(feed.feed_id).get_num_messages() == 3  # a bare id works too

    records = reader.get_message_records()
    assert [r.number for r in records] == [0, 1, 2]
    assert {r.client_id for r in records} == {kcl.get_client_id()}
    assert all(r.appended_at_ms > 0 and len(r.signature) == 128 for r in records)
    # Messages come back as their canonical JSON: numpy scalars and integral floats as the JSON they are.
    import numpy as np

    feed.append_message({"b": np.int64(7), "a": 2.0, "nested": {"z": [1, None]}})
    reader.set_position(3)
    assert reader.get_next_messages() == [{"a": 2, "b": 7, "nested": {"z": [1, None]}}]


def test_bad_input_is_refused_with_clear_errors(registered: RunningServer) -> None:
    feed = kcl.create_feed()
    with pytest.raises(kcl.InvalidArgumentError, match="must be a dict"):
        feed.append_message("text")  # type: ignore[arg-type]
    with pytest.raises(kcl.InvalidArgumentError, match="needs a list"):
        feed.append_messages({"a": 1})  # type: ignore[arg-type]
    with pytest.raises(kcl.InvalidArgumentError, match="at most 1048576 bytes"):
        feed.append_message({"x": "y" * MAX_MESSAGE_BYTES})
    with pytest.raises(kcl.InvalidArgumentError, match="at most 1000 messages"):
        feed.append_messages([{"i": i} for i in range(MAX_MESSAGES_PER_APPEND + 1)])
    with pytest.raises(kcl.InvalidArgumentError, match="at most 4194304 bytes"):
        feed.append_messages([{"x": "y" * (MAX_MESSAGE_BYTES - 20)}] * 5)
    with pytest.raises(kcl.SerializationError):
        feed.append_message({"x": float("nan")})
    assert len(feed.append_messages([{"i": i} for i in range(MAX_MESSAGES_PER_APPEND)])) == 1000
    big = [{"x": "y" * (MAX_MESSAGE_BYTES - 20)}] * 3  # 3 MiB in one request
    assert feed.append_messages(big) == [1000, 1001, 1002]
    reader = kcl.load_feed(feed.uri)
    reader.set_position(999)
    assert len(reader.get_next_messages()) == 4  # pages of at most ~4 MiB, read until caught up
    for ref in ("sha1://" + "0" * 40, "kachery-feed://xyz", "nothing"):
        with pytest.raises(kcl.InvalidURIError):
            kcl.load_feed(ref)
    with pytest.raises(kcl.ServerError, match="does not exist") as missing:
        kcl.load_feed("kachery-feed://" + "0" * 32)
    assert missing.value.error_code == "feed_not_found"
    with pytest.raises(kcl.InvalidArgumentError, match="timeout_sec"):
        feed.get_next_messages(timeout_sec=-1)
    with pytest.raises(kcl.InvalidArgumentError, match="position"):
        feed.set_position(-1)
    assert feed.get_num_messages() == 1003  # nothing refused was appended


def test_the_server_checks_messages_itself_and_applies_a_retried_append_once(registered: RunningServer) -> None:
    feed = kcl.create_feed()
    api = api_client()
    assert api.identity is not None

    def signed(body: str) -> dict[str, str]:
        return {"body": body, "signature": api.identity.sign(signed_bytes(feed.feed_id, body))}

    def append(messages: list[dict[str, str]], append_id: str | None = None) -> dict:
        body = {"append_id": append_id or secrets.token_hex(16), "messages": messages}
        return api.call("POST", f"/api/feeds/{feed.feed_id}/messages", json_body=body)

    other_feed = kcl.create_feed()
    moved = {"body": '{"a":1}', "signature": api.identity.sign(signed_bytes(other_feed.feed_id, '{"a":1}'))}
    for messages, code in [
        ([{"body": '{"a":1}', "signature": "0" * 128}], "bad_message_signature"),
        ([moved], "bad_message_signature"),  # signed for another feed
        ([signed('{"a": 1}')], "invalid_message"),  # not canonical
        ([signed("[1,2]")], "invalid_message"),  # not an object
        ([signed("{")], "invalid_message"),
        ([signed('{"a":NaN}')], "invalid_message"),
        ([], "invalid_request"),
    ]:
        with pytest.raises(kcl.ServerError) as refused:
            append(messages)
        assert (refused.value.error_code, refused.value.status) == (code, 400)
    assert feed.get_num_messages() == 0

    append_id = secrets.token_hex(16)
    first = append([signed('{"n":0}'), signed('{"n":1}')], append_id)
    again = append([signed('{"n":0}'), signed('{"n":1}')], append_id)  # as a client retrying a lost answer
    assert (first["first_number"], first["repeated"]) == (0, False)
    assert (again["first_number"], again["repeated"]) == (0, True)
    with pytest.raises(kcl.ServerError) as reused:
        append([signed('{"n":0}'), signed('{"n":"other"}')], append_id)  # the same id for other messages
    assert (reused.value.error_code, reused.value.status) == ("append_id_reused", 409)
    assert kcl.load_feed(feed.uri).get_messages() == [{"n": 0}, {"n": 1}]


def test_a_message_altered_in_the_database_fails_verification(registered: RunningServer) -> None:
    feed = kcl.create_feed()
    feed.append_messages([{"amount": 10}, {"amount": 20}])
    statement = "UPDATE feed_messages SET body = :body WHERE feed_id = :feed_id AND number = 1"
    _sql(registered, statement, body='{"amount":99}', feed_id=feed.feed_id)
    reader = kcl.load_feed(feed.uri)
    with pytest.raises(kcl.IntegrityError, match="message 1 does not carry a valid signature"):
        reader.get_next_messages()
    assert reader.current_message_number == 0  # nothing unverified was handed out
    assert reader.get_messages(0, 1) == [{"amount": 10}]


def test_a_failure_on_a_later_page_does_not_move_the_reader_past_unread_messages(registered: RunningServer) -> None:
    feed = kcl.create_feed()
    feed.append_messages([{"i": i} for i in range(1000)])  # one full page
    feed.append_message({"i": 1000})
    statement = "UPDATE feed_messages SET body = :body WHERE feed_id = :feed_id AND number = 1000"
    _sql(registered, statement, body='{"i":-1}', feed_id=feed.feed_id)
    reader = kcl.load_feed(feed.uri)
    with pytest.raises(kcl.IntegrityError, match="message 1000"):
        reader.get_next_messages()  # page 1 verified, page 2 not
    assert reader.current_message_number == 0
    assert reader.get_next_messages(max_messages=1000) == [{"i": i} for i in range(1000)]
    assert reader.current_message_number == 1000


def _sql(server: RunningServer, statement: str, **params: str) -> None:
    """Change the server's database behind its back (as someone with access to the database could)."""
    from sqlalchemy import create_engine, text

    url = server.env.get("KACHERY_CLOUD_SERVER_DATABASE_URL") or f"sqlite:///{server.data_dir / 'server.db'}"
    engine = create_engine(url)
    with engine.begin() as connection:
        assert connection.execute(text(statement), params).rowcount == 1
    engine.dispose()


APPENDER = """
import sys
import kachery_cloud as kcl

feed = kcl.load_feed(sys.argv[1])
writer = int(sys.argv[2])
for i in range(int(sys.argv[3])):
    feed.append_message({"writer": writer, "i": i})
"""


def test_8_processes_appending_200_messages_each_get_numbers_0_to_1599(
    registered: RunningServer, tmp_path: Path
) -> None:
    feed = kcl.create_feed()
    script = tmp_path / "append.py"
    script.write_text(APPENDER)
    writers = [subprocess.Popen([sys.executable, str(script), feed.uri, str(w), "200"]) for w in range(8)]
    assert [w.wait(timeout=240) for w in writers] == [0] * 8
    records = kcl.load_feed(feed.uri).get_message_records()
    assert [r.number for r in records] == list(range(1600))
    seen = [(r.message["writer"], r.message["i"]) for r in records]
    assert sorted(seen) == [(w, i) for w in range(8) for i in range(200)]  # every message exactly once
    for w in range(8):  # and each writer's messages in the order it appended them
        assert [i for writer, i in seen if writer == w] == list(range(200))


FOLLOWER = """
import json, sys, time
import kachery_cloud as kcl

feed = kcl.load_feed(sys.argv[1])
print("following", flush=True)
received = []
while len(received) < int(sys.argv[2]):
    started = time.monotonic()
    batch = feed.get_next_messages(timeout_sec=60)
    received += [{"message": m, "waited": time.monotonic() - started} for m in batch]
print(json.dumps(received), flush=True)
"""


def follow(tmp_path: Path, uri: str, count: int) -> subprocess.Popen[str]:
    """A follower process, started and waiting on the feed before this returns."""
    script = tmp_path / "follow.py"
    script.write_text(FOLLOWER)
    process = subprocess.Popen([sys.executable, str(script), uri, str(count)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "following\n"
    time.sleep(0.5)  # let it get into its long-poll
    return process


def test_a_follower_started_first_receives_what_another_process_appends(
    registered: RunningServer, tmp_path: Path
) -> None:
    feed = kcl.create_feed()
    follower = follow(tmp_path, feed.uri, 3)
    appended = subprocess.run(
        [sys.executable, "-c", APPENDER, feed.uri, "1", "3"], capture_output=True, text=True, timeout=60
    )
    assert appended.returncode == 0, appended.stderr
    out, _ = follower.communicate(timeout=90)
    received = json.loads(out)
    assert [r["message"] for r in received] == [{"writer": 1, "i": i} for i in range(3)]
    # It was waiting when the messages came (the appender is a new process, started after the follower), and was
    # woken by the append, not by the end of its 60 s wait (nor by the server's 30 s long-poll limit).
    assert 0.2 < received[0]["waited"] < 20


def test_an_empty_wait_returns_after_its_timeout(registered: RunningServer) -> None:
    feed = kcl.create_feed()
    started = time.monotonic()
    assert feed.get_next_messages(timeout_sec=1.5) == []
    assert 1.4 <= time.monotonic() - started < 10


def test_reading_needs_read_access_and_appending_needs_write_access(
    registered: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = registered
    private = kcl.create_feed()
    private.append_message({"secret": True})
    public_project = f"open-{secrets.token_hex(3)}"
    server.admin("create-project", public_project, "--public")
    public = kcl.create_feed(project_id=public_project)
    public.append_message({"published": True})

    switch_client(monkeypatch, tmp_path / "outsider", register=False)
    act_as(server, monkeypatch, f"outsider-{secrets.token_hex(3)}@example.org")
    # A feed of a private project is, to a non-member, a feed that does not exist.
    with pytest.raises(kcl.ServerError, match=f"feed {private.feed_id} does not exist"):
        kcl.load_feed(private.uri)
    assert kcl.load_feed(public.uri).get_next_messages() == [{"published": True}]
    with pytest.raises(kcl.PermissionDeniedError, match="not a member"):
        kcl.load_feed(public.uri).append_message({"defaced": True})

    reader = f"reader-{secrets.token_hex(3)}@example.org"
    act_as(server, monkeypatch, reader)
    server.admin("add-member", "default", reader, "--role", "read")
    handle = kcl.load_feed(private.uri)
    assert handle.get_next_messages() == [{"secret": True}]
    with pytest.raises(kcl.PermissionDeniedError, match="needs 'write'"):
        handle.append_message({"reader": "write"})
    with pytest.raises(kcl.PermissionDeniedError, match="needs 'write'"):
        kcl.create_feed(project_id="default")

    monkeypatch.delenv("KACHERY_CLOUD_CLIENT_ID")
    monkeypatch.delenv("KACHERY_CLOUD_PRIVATE_KEY")
    switch_client(monkeypatch, tmp_path / "unregistered", register=False)
    with pytest.raises(kcl.NotRegisteredError, match="kachery-cloud-init"):
        kcl.load_feed(private.uri)
    with pytest.raises(kcl.NotRegisteredError, match="kachery-cloud-init"):
        kcl.create_feed()
    assert kcl.load_feed(public.uri).get_num_messages() == 1

    switch_client(monkeypatch, tmp_path / "ephemeral", register=False)
    monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "1")
    ephemeral = kcl.load_feed(public.uri)
    assert ephemeral.get_next_messages() == [{"published": True}]
    with pytest.raises(kcl.ServerError, match=f"feed {private.feed_id} does not exist"):
        kcl.load_feed(private.uri)
    with pytest.raises(kcl.EphemeralModeError, match="ephemeral mode"):
        ephemeral.append_message({"anonymous": True})
    with pytest.raises(kcl.EphemeralModeError, match="ephemeral mode"):
        kcl.create_feed(project_id=public_project)
    assert private.get_num_messages() == 1 and public.get_num_messages() == 1


def test_cli_feed_create_append_read_and_follow(registered: RunningServer) -> None:
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli("kachery-cloud", "feed", *args, stdin=stdin)

    uri = run("create").stdout.strip()
    assert uri.startswith("kachery-feed://")
    follower = subprocess.Popen(
        [str(BIN / "kachery-cloud"), "feed", "read", uri, "--follow"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert run("append", uri, '{"a": 1}', '{"b": 2}').stdout == "appended 2 messages: numbers 0..1\n"
        assert run("append", uri, stdin='{"c": 3}\n\n{"d": 4}\n').stdout == "appended 2 messages: numbers 2..3\n"
        assert follower.stdout is not None
        assert [json.loads(follower.stdout.readline()) for _ in range(4)] == [{"a": 1}, {"b": 2}, {"c": 3}, {"d": 4}]
    finally:
        follower.terminate()
        follower.wait(timeout=30)
    assert run("read", uri).stdout.splitlines() == ['{"a": 1}', '{"b": 2}', '{"c": 3}', '{"d": 4}']
    assert run("read", uri, "--start", "1", "--end", "3").stdout.splitlines() == ['{"b": 2}', '{"c": 3}']
    record = json.loads(run("read", uri, "--records", "--start", "3").stdout)
    assert record["number"] == 3 and record["message"] == {"d": 4} and record["client_id"] == kcl.get_client_id()
    assert json.loads(run("info", uri).stdout)["num_messages"] == 4
    bad = run("append", uri, "not json")
    assert bad.returncode == 1 and "argument 1 is not valid JSON" in bad.stderr and "Traceback" not in bad.stderr
    bad = run("append", uri, "[1]")
    assert bad.returncode == 1 and "must be a dict" in bad.stderr


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, postgres: PostgresDatabases) -> str | None:
    return postgres.create() if request.param == "postgresql" else None


def test_a_restarted_server_keeps_everything_and_a_waiting_follower_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str | None
) -> None:
    from kachery_cloud._connection import forget_clients

    server = start_server(tmp_path / "server", database_url=database_url)
    try:
        monkeypatch.setenv("KACHERY_CLOUD_API_URL", server.url)
        forget_clients()
        kcl.init(quiet=True)
        kcl.set_mutable("@kept/key", "value", expected_version=0)
        kcl.set_mutable("@kept/key", "value 2")
        feed = kcl.create_feed()
        feed.append_messages([{"before": i} for i in range(5)])
        reader = kcl.load_feed(feed.uri)
        assert len(reader.get_next_messages()) == 5

        received: list[dict] = []
        waiting = threading.Thread(target=lambda: received.extend(reader.get_next_messages(timeout_sec=60)))
        waiting.start()
        time.sleep(0.5)
        stopped = time.monotonic()
        assert server.stop() == 0
        stop_took = time.monotonic() - stopped
        server = start_server(tmp_path / "server", database_url=database_url, port=server.port)
        feed.append_message({"after": "restart"})
        waiting.join(timeout=90)
        assert received == [{"after": "restart"}]
        # The long-poll in flight did not hold the shutdown up for the rest of its 30 s wait.
        assert stop_took < 20

        info = kcl.get_mutable_info("@kept/key")
        assert info is not None and (info.value, info.version) == ("value 2", 2)
        assert kcl.load_feed(feed.uri).get_messages() == [{"before": i} for i in range(5)] + [{"after": "restart"}]
        assert feed.append_message({"numbering": "continues"}) == 6
    finally:
        server.stop()


def test_a_follower_on_one_replica_is_woken_by_an_append_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: PostgresDatabases
) -> None:
    """Two API servers on one PostgreSQL database: the wake-up crosses replicas by LISTEN/NOTIFY."""
    from kachery_cloud._connection import forget_clients

    database_url = postgres.create()
    first = start_server(tmp_path / "a", database_url=database_url)
    second = start_server(tmp_path / "b", database_url=database_url)
    try:
        monkeypatch.setenv("KACHERY_CLOUD_API_URL", first.url)
        forget_clients()
        kcl.init(quiet=True)
        feed = kcl.create_feed()
        follower = follow(tmp_path, feed.uri, 1)  # on the first replica
        monkeypatch.setenv("KACHERY_CLOUD_API_URL", second.url)
        forget_clients()
        kcl.load_feed(feed.uri).append_message({"via": "second replica"})
        out, _ = follower.communicate(timeout=90)
        received = json.loads(out)
        assert [r["message"] for r in received] == [{"via": "second replica"}]
        # It was waiting when the message came, and was woken then, not at the end of its wait.
        assert 0.2 < received[0]["waited"] < 20
        assert "wake-up listener lost" not in first.log() + second.log()
    finally:
        first.stop()
        second.stop()
