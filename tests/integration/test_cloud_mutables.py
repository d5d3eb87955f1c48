"""Project mutables through a real API server, on SQLite and on PostgreSQL: round trips, limits, compare-and-swap
under concurrent writers, permissions (members, readers, outsiders, ephemeral clients) and the CLI."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import kachery_cloud as kcl
from kachery_cloud._connection import api_client
from kachery_cloud.protocol.mutable_key import MAX_VALUE_BYTES

from ..helpers import act_as, switch_client
from ..helpers import run_cli as run
from ..servers import RunningServer


def folder() -> str:
    """A folder of its own for each test, since the server (and its default project) is shared by the module."""
    return f"@t{secrets.token_hex(4)}"


def test_set_get_list_and_delete_round_trip(registered: RunningServer) -> None:
    base = folder()
    uri = kcl.store_text("example text", label="example.txt")
    assert kcl.set_mutable(f"{base}/key1", uri) == 1
    assert kcl.load_text(kcl.get_mutable(f"{base}/key1")) == "example text"
    assert kcl.get_mutable(f"{base}/missing") is None
    assert kcl.get_mutable(f"{base}/missing", default_value="none") == "none"

    odd = "ünïcødé \x00 NUL and\nnewlines \U0001f600"
    kcl.set_mutable(f"{base}/@runs/run1", odd)
    kcl.set_mutable(f"{base}/@runs/@deep/run2", "2")
    kcl.set_mutable(f"{base}/@runsx/other", "not under @runs")
    assert kcl.get_mutable(f"{base}/@runs/run1") == odd
    info = kcl.get_mutable_info(f"{base}/@runs/run1")
    assert info is not None and info.version == 1 and info.project_id == "default"
    assert info.updated_by_client_id == kcl.get_client_id()

    assert kcl.list_mutables(f"{base}/@runs") == [f"{base}/@runs/@deep/run2", f"{base}/@runs/run1"]
    assert kcl.list_mutables(base) == sorted(
        [f"{base}/key1", f"{base}/@runs/run1", f"{base}/@runs/@deep/run2", f"{base}/@runsx/other"]
    )
    assert set(kcl.list_mutables()) >= set(kcl.list_mutables(base))

    assert kcl.delete_mutable(f"{base}/key1") is True
    assert kcl.delete_mutable(f"{base}/key1") is False
    assert kcl.get_mutable(f"{base}/key1") is None
    assert kcl.delete_mutable_folder(f"{base}/@runs") == 2
    assert kcl.list_mutables(base) == [f"{base}/@runsx/other"]
    assert kcl.delete_mutable_folder(f"{base}/@runs") == 0


def test_keys_list_in_byte_order_on_every_database(registered: RunningServer) -> None:
    database_url = registered.env.get("KACHERY_CLOUD_SERVER_DATABASE_URL")
    if database_url:  # the PostgreSQL test databases sort text linguistically: 'a' before 'B'
        from sqlalchemy import create_engine, text

        engine = create_engine(database_url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 'a' < 'B'")).scalar(), "the test database sorts by bytes"
        engine.dispose()
    base = folder()
    keys = [f"{base}/B", f"{base}/_c", f"{base}/a", f"{base}/@x/z", f"{base}/\u00e9"]
    for key in keys:
        kcl.set_mutable(key, "v")
    assert kcl.list_mutables(base) == sorted(keys) == [f"{base}/@x/z", f"{base}/B", f"{base}/_c", f"{base}/a",
                                                        f"{base}/\u00e9"]  # fmt: skip


def test_a_key_that_is_not_set_is_at_version_0(registered: RunningServer) -> None:
    key = f"{folder()}/k"
    api = api_client()
    assert api.call("POST", "/api/mutables/get", json_body={"key": key})["version"] == 0
    kcl.set_mutable(key, "v")
    kcl.delete_mutable(key)
    answer = api.call("POST", "/api/mutables/get", json_body={"key": key})
    assert (answer["found"], answer["version"]) == (False, 0)
    assert kcl.set_mutable(key, "again", expected_version=answer["version"]) == 3  # the tombstone kept counting


def test_listing_pages_through_many_keys(registered: RunningServer) -> None:
    from api_server.services.mutables import MAX_LIST

    base = folder()
    api = api_client()
    keys = [f"{base}/k{i:05d}" for i in range(MAX_LIST + 7)]
    for key in keys:
        api.call("POST", "/api/mutables/set", json_body={"key": key, "value": "v"})
    assert kcl.list_mutables(base) == keys


def test_values_up_to_1_mib_and_keys_of_the_grammar_only(registered: RunningServer) -> None:
    base = folder()
    largest = "x" * MAX_VALUE_BYTES
    kcl.set_mutable(f"{base}/big", largest)
    assert kcl.get_mutable(f"{base}/big") == largest
    with pytest.raises(kcl.InvalidArgumentError, match="at most 1048576 bytes"):
        kcl.set_mutable(f"{base}/big", largest + "x")
    with pytest.raises(kcl.InvalidArgumentError, match="at most 1048576 bytes"):
        kcl.set_mutable(f"{base}/big", "é" * (MAX_VALUE_BYTES // 2 + 1))  # 2 bytes of UTF-8 each
    with pytest.raises(kcl.InvalidArgumentError, match="must be a str"):
        kcl.set_mutable(f"{base}/n", 5)  # type: ignore[arg-type]
    with pytest.raises(kcl.InvalidMutableKeyError, match="'@test/key1'"):
        kcl.set_mutable("test/key1", "v")
    # The server applies the same rules to a client that skips its own checks.
    api = api_client()
    for body, code in [
        ({"key": f"{base}/big", "value": largest + "x"}, "value_too_large"),
        ({"key": "test/key1", "value": "v"}, "invalid_key"),
        ({"key": f"{base}/../x", "value": "v"}, "invalid_key"),
        ({"key": f"{base}/{'k' * 300}", "value": "v"}, "invalid_key"),  # a segment over 255 bytes
        ({"key": "/".join([base] + ["@" + "k" * 250] * 5 + ["v"]), "value": "v"}, "invalid_key"),  # over 1024
    ]:
        with pytest.raises(kcl.ServerError) as refused:
            api.call("POST", "/api/mutables/set", json_body=body)
        assert refused.value.error_code == code and refused.value.status == 400
    assert kcl.get_mutable(f"{base}/big") == largest


def test_compare_and_swap_refuses_a_stale_version(registered: RunningServer) -> None:
    key = f"{folder()}/latest"
    assert kcl.set_mutable(key, "first", expected_version=0) == 1  # 0: only if not set yet
    with pytest.raises(kcl.VersionConflictError, match="is at version 1, not version 0"):
        kcl.set_mutable(key, "again", expected_version=0)
    assert kcl.set_mutable(key, "second", expected_version=1) == 2
    with pytest.raises(kcl.VersionConflictError, match="someone changed it"):
        kcl.set_mutable(key, "lost update", expected_version=1)
    assert kcl.get_mutable(key) == "second"
    with pytest.raises(kcl.VersionConflictError):
        kcl.delete_mutable(key, expected_version=1)
    assert kcl.delete_mutable(key, expected_version=2) is True
    # Deleting and setting again does not bring an old version back: a swap against version 1 still fails.
    assert kcl.set_mutable(key, "third") == 4
    with pytest.raises(kcl.VersionConflictError):
        kcl.set_mutable(key, "from a stale read", expected_version=1)
    with pytest.raises(kcl.InvalidArgumentError, match="expected_version"):
        kcl.set_mutable(key, "x", expected_version=-1)


INCREMENTER = """
import sys
import kachery_cloud as kcl

key, rounds = sys.argv[1], int(sys.argv[2])
conflicts = 0
for _ in range(rounds):
    while True:
        info = kcl.get_mutable_info(key)
        try:
            kcl.set_mutable(key, str(int(info.value) + 1), expected_version=info.version)
            break
        except kcl.VersionConflictError:
            conflicts += 1
print(conflicts)
"""


def test_concurrent_writers_with_compare_and_swap_lose_no_update(registered: RunningServer, tmp_path: Path) -> None:
    key = f"{folder()}/counter"
    kcl.set_mutable(key, "0")
    script = tmp_path / "increment.py"
    script.write_text(INCREMENTER)
    workers = [
        subprocess.Popen([sys.executable, str(script), key, "25"], stdout=subprocess.PIPE, text=True) for _ in range(4)
    ]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4
    info = kcl.get_mutable_info(key)
    assert info is not None
    assert info.value == "100"  # every one of the 4 x 25 increments counted once
    assert info.version == 101
    print("conflicts resolved by retrying:", sum(int(o) for o in outputs))


def test_reading_needs_read_access_and_writing_needs_write_access(
    registered: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = registered
    base = folder()
    kcl.set_mutable(f"{base}/private", "lab only")
    public_project = f"open-{secrets.token_hex(3)}"
    server.admin("create-project", public_project, "--public")
    kcl.set_mutable(f"{base}/published", "for everyone", project_id=public_project)

    switch_client(monkeypatch, tmp_path / "outsider", register=False)
    act_as(server, monkeypatch, f"outsider-{secrets.token_hex(3)}@example.org")
    # A private project is, to a non-member, a project that does not exist.
    with pytest.raises(kcl.ServerError, match="project default does not exist, or is private to its members"):
        kcl.get_mutable(f"{base}/private", project_id="default")
    with pytest.raises(kcl.ServerError, match="project default does not exist, or is private to its members"):
        kcl.set_mutable(f"{base}/private", "overwritten", project_id="default")
    with pytest.raises(kcl.ServerError, match="project default does not exist, or is private to its members"):
        kcl.list_mutables(base, project_id="default")
    assert kcl.get_mutable(f"{base}/published", project_id=public_project) == "for everyone"
    with pytest.raises(kcl.PermissionDeniedError, match="not a member"):
        kcl.set_mutable(f"{base}/published", "defaced", project_id=public_project)

    reader = f"reader-{secrets.token_hex(3)}@example.org"
    act_as(server, monkeypatch, reader)
    server.admin("add-member", "default", reader, "--role", "read")
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", "default")
    assert kcl.get_mutable(f"{base}/private") == "lab only"
    assert kcl.list_mutables(base) == [f"{base}/private"]
    with pytest.raises(kcl.PermissionDeniedError, match="needs 'write'"):
        kcl.set_mutable(f"{base}/private", "reader's write")
    with pytest.raises(kcl.PermissionDeniedError, match="needs 'write'"):
        kcl.delete_mutable_folder(base)
    monkeypatch.delenv("KACHERY_CLOUD_PROJECT")

    monkeypatch.delenv("KACHERY_CLOUD_CLIENT_ID")
    monkeypatch.delenv("KACHERY_CLOUD_PRIVATE_KEY")
    switch_client(monkeypatch, tmp_path / "ephemeral", register=False)
    monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "1")
    assert kcl.get_mutable(f"{base}/published", project_id=public_project) == "for everyone"
    assert kcl.list_mutables(base, project_id=public_project) == [f"{base}/published"]
    with pytest.raises(kcl.ServerError, match="project default does not exist, or is private to its members"):
        kcl.get_mutable(f"{base}/private", project_id="default")
    with pytest.raises(kcl.ServerError, match="no default project"):
        kcl.get_mutable(f"{base}/published")

    # A client with a key that nobody registered is told to register, not that it is anonymous.
    monkeypatch.delenv("KACHERY_CLOUD_EPHEMERAL")
    switch_client(monkeypatch, tmp_path / "unregistered", register=False)
    with pytest.raises(kcl.NotRegisteredError, match="kachery-cloud-init"):
        kcl.get_mutable(f"{base}/private", project_id="default")
    with pytest.raises(kcl.NotRegisteredError, match="kachery-cloud-init"):
        kcl.get_mutable(f"{base}/private")
    assert kcl.get_mutable(f"{base}/published", project_id=public_project) == "for everyone"
    switch_client(monkeypatch, tmp_path / "ephemeral", register=False)
    monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "1")
    for write in (
        lambda: kcl.set_mutable(f"{base}/x", "y", project_id=public_project),
        lambda: kcl.delete_mutable(f"{base}/published", project_id=public_project),
        lambda: kcl.delete_mutable_folder(base, project_id=public_project),
    ):
        with pytest.raises(kcl.EphemeralModeError, match="ephemeral mode"):
            write()
    assert not (tmp_path / "ephemeral" / "private.pem").exists()
    switch_client(monkeypatch, tmp_path / "outsider", register=False)
    monkeypatch.delenv("KACHERY_CLOUD_EPHEMERAL")
    kcl.init(quiet=True)  # back to the server's owner, who sees that nothing changed
    assert kcl.get_mutable(f"{base}/private") == "lab only"
    assert kcl.get_mutable(f"{base}/published", project_id=public_project) == "for everyone"


def test_cli_mutable_get_set_delete_list(registered: RunningServer) -> None:
    base = folder()
    assert run("kachery-cloud", "mutable", "set", f"{base}/a", "value a").stdout == "version 1\n"
    assert run("kachery-cloud", "mutable", "set", f"{base}/@sub/b", "-", stdin="from stdin\n").returncode == 0
    assert run("kachery-cloud", "mutable", "get", f"{base}/a").stdout == "value a\n"
    assert kcl.get_mutable(f"{base}/@sub/b") == "from stdin"  # without the final newline
    assert run("kachery-cloud", "mutable", "list", base).stdout.splitlines() == [f"{base}/@sub/b", f"{base}/a"]
    conflict = run("kachery-cloud", "mutable", "set", f"{base}/a", "stale", "--expected-version", "0")
    assert conflict.returncode == 1 and "is at version 1, not version 0" in conflict.stderr
    assert "Traceback" not in conflict.stderr
    assert run("kachery-cloud", "mutable", "set", f"{base}/a", "new", "--expected-version", "1").stdout == "version 2\n"
    info = run("kachery-cloud", "mutable", "get", f"{base}/a", "--info").stdout
    assert '"version": 2' in info and '"value": "new"' in info
    missing = run("kachery-cloud", "mutable", "get", f"{base}/nothing")
    assert missing.returncode == 1 and f"{base}/nothing is not set" in missing.stderr
    assert run("kachery-cloud", "mutable", "delete", f"{base}/a").stdout == f"deleted {base}/a\n"
    assert run("kachery-cloud", "mutable", "delete", f"{base}/a").stdout == f"{base}/a was not set\n"
    deleted = run("kachery-cloud", "mutable", "delete", "--folder", base).stdout
    assert deleted == f"deleted 1 mutable under {base}\n"
    bad = run("kachery-cloud", "mutable", "set", "test/key1", "v")
    assert bad.returncode == 1 and "must start with '@'" in bad.stderr
    # --local works on the client directory, not the server
    assert run("kachery-cloud", "mutable", "set", "--local", f"{base}/l", "here").returncode == 0
    assert run("kachery-cloud", "mutable", "get", "--local", f"{base}/l").stdout == "here\n"
    assert kcl.get_mutable(f"{base}/l") is None
