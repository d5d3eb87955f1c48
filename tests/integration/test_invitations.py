"""Joining without Google: one-time invitation links (``admin invite`` → ``kachery-cloud-init --invite``), the
roles they give, and the refusals of used, expired, foreign and malformed links; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import kachery_cloud as kcl
from kachery_cloud.errors import ConfigError, NotRegisteredError, PermissionDeniedError, ServerError

from ..helpers import BIN, switch_client
from ..servers import RunningServer

# What depends on the database (a link used once when four clients race for it) runs on SQLite and PostgreSQL;
# the rest, which only the CLI and the rules decide, on SQLite alone.
sqlite_only = pytest.mark.parametrize("server", ["sqlite"], indirect=True)


def invite(server: RunningServer, project: str, role: str, *extra: str) -> str:
    """The link ``admin invite`` prints (its only line on stdout)."""
    printed = server.admin("invite", project, "--role", role, *extra).stdout.strip().splitlines()
    assert len(printed) == 1 and "/invite/" in printed[0], printed
    return printed[0]


def join(monkeypatch: pytest.MonkeyPatch, directory: Path, link: str) -> dict:
    """Make ``directory`` this process's client directory (a new person's) and accept ``link`` in it."""
    switch_client(monkeypatch, directory, register=False)
    return kcl.init(invite=link, quiet=True)


def init_cli(directory: Path, server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "KACHERY_CLOUD_DIR": str(directory), "KACHERY_CLOUD_API_URL": server.url}
    return subprocess.run([str(BIN / "kachery-cloud-init"), *args], env=env, capture_output=True, text=True, timeout=60)


def test_an_invitation_makes_a_new_user_with_its_role_and_a_read_member_cannot_write(
    registered: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    owner_uri = kcl.store_json({"from": "the owner"})
    link = invite(registered, "default", "read")

    info = join(monkeypatch, tmp_path / "reader", link)
    users = {u["name"]: u for u in json.loads(registered.admin("list-users", "--json").stdout)}
    assert users[info["user"]]["local_owner"] is False  # a user of its own, not the owner
    assert [(p["project_id"], p["role"]) for p in info["projects"]] == [("default", "read")]
    assert kcl.load_json(owner_uri) == {"from": "the owner"}
    with pytest.raises(PermissionDeniedError):
        kcl.store_json({"from": "a reader"})
    with pytest.raises(PermissionDeniedError):
        kcl.set_mutable("@reader/x", "y")
    assert kcl.get_mutable("@reader/x") is None


@sqlite_only
def test_a_link_works_once_and_until_it_expires(
    registered: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    registered.admin("create-project", "once")
    link = invite(registered, "once", "write")
    join(monkeypatch, tmp_path / "first", link)
    used = init_cli(tmp_path / "second", registered, "--invite", link)
    assert used.returncode == 1 and "already used" in used.stderr and "Traceback" not in used.stderr

    short = invite(registered, "once", "write", "--expires", "1s")
    time.sleep(1.5)
    expired = init_cli(tmp_path / "third", registered, "--invite", short)
    assert expired.returncode == 1 and "expired" in expired.stderr and "Traceback" not in expired.stderr
    states = sorted(i["state"] for i in json.loads(registered.admin("list-invitations", "once", "--json").stdout))
    assert states == ["expired", "used"]

    # A link of another server, or a half-copied one, says so.
    forged = link.rsplit("/", 1)[0] + "/" + "A" * 43
    unknown = init_cli(tmp_path / "fourth", registered, "--invite", forged)
    assert unknown.returncode == 1 and "not valid on this server" in unknown.stderr
    garbled = init_cli(tmp_path / "fifth", registered, "--invite", "http://lab.example/join")
    assert garbled.returncode == 1 and "not an invitation link" in garbled.stderr and "Traceback" not in garbled.stderr


def test_four_clients_racing_for_one_link_register_one(registered: RunningServer, tmp_path: Path) -> None:
    before = len(json.loads(registered.admin("list-clients", "--json").stdout))
    link = invite(registered, "default", "write")
    racers = [
        subprocess.Popen(
            [str(BIN / "kachery-cloud-init"), "--invite", link],
            env={
                **os.environ,
                "KACHERY_CLOUD_DIR": str(tmp_path / f"racer{i}"),
                "KACHERY_CLOUD_API_URL": registered.url,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    results = [(r.wait(timeout=60), r.stderr.read() if r.stderr else "") for r in racers]
    assert sorted(code for code, _ in results) == [0, 1, 1, 1], results
    assert all("already used" in err for code, err in results if code)
    clients = json.loads(registered.admin("list-clients", "--json").stdout)
    assert len(clients) == before + 1  # the winner's


@sqlite_only
def test_an_invitation_for_a_named_user_and_one_more_project(
    registered: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    registered.admin("create-user", "bob-named")
    registered.admin("create-project", "bobs-second")
    info = join(monkeypatch, tmp_path / "bob", invite(registered, "default", "write", "--user", "bob-named"))
    assert info["user"] == "bob-named"
    uri = kcl.store_json({"by": "bob"})

    # The same client takes a second invitation: same user, one more project; a lower role changes nothing.
    again = kcl.init(invite=invite(registered, "bobs-second", "admin"), quiet=True)
    assert again["user"] == "bob-named"
    assert kcl.init(invite=invite(registered, "default", "read"), quiet=True)["user"] == "bob-named"
    roles = {p["project_id"]: p["role"] for p in kcl.get_client_info()["projects"]}
    assert roles == {"default": "write", "bobs-second": "admin"}
    assert kcl.load_json(uri) == {"by": "bob"}

    # An invitation naming someone else is not for this client.
    with pytest.raises(ServerError, match="this invitation is for carol-named"):
        kcl.init(invite=invite(registered, "default", "write", "--user", "carol-named"), quiet=True)
    # Nobody is invited to be the owner.
    owner = next(u["name"] for u in json.loads(registered.admin("list-users", "--json").stdout) if u["local_owner"])
    refused = registered.admin("invite", "default", "--role", "admin", "--user", owner, check=False)
    assert refused.returncode == 1 and "owner" in refused.stderr


@sqlite_only
def test_a_link_for_another_server_than_the_configured_one_is_refused(
    registered: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    link = invite(registered, "default", "read").replace("127.0.0.1", "localhost")
    switch_client(monkeypatch, tmp_path / "elsewhere", register=False)
    with pytest.raises(ConfigError, match="this invitation is for the server at http://localhost"):
        kcl.init(invite=link, quiet=True)


@sqlite_only
def test_without_a_configured_server_the_link_sets_it(
    registered: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    link = invite(registered, "default", "read")
    monkeypatch.delenv("KACHERY_CLOUD_API_URL")
    switch_client(monkeypatch, tmp_path / "fresh", register=False)
    with pytest.raises(ServerError, match="not valid on this server"):
        kcl.init(invite=link.rsplit("/", 1)[0] + "/" + "B" * 43, quiet=True)
    assert not (tmp_path / "fresh" / "config.yaml").exists()  # a refused link points nothing anywhere
    info = join(monkeypatch, tmp_path / "fresh", link)
    assert info["server_url"] == registered.url
    assert f"api_url: {registered.url}" in (tmp_path / "fresh" / "config.yaml").read_text()
    # Later calls go to that server without any environment.
    assert kcl.get_client_info()["client_id"] == info["client_id"]


@sqlite_only
def test_users_are_created_listed_and_removed(
    registered: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    registered.admin("create-user", "dora", "--email", "Dora@Lab.example")
    assert registered.admin("create-user", "dora", check=False).stderr.count("already a user named") == 1
    assert "is not a user name" in registered.admin("create-user", "no spaces", check=False).stderr
    join(monkeypatch, tmp_path / "dora", invite(registered, "default", "write", "--user", "dora"))
    users = {u["name"]: u for u in json.loads(registered.admin("list-users", "--json").stdout)}
    assert users["dora"]["email"] == "dora@lab.example"

    registered.admin("create-project", "doras", "--owner", "dora")
    refused = registered.admin("remove-user", "dora", check=False)
    assert refused.returncode == 1 and "owns doras" in refused.stderr
    owner = next(name for name, u in users.items() if u["local_owner"])
    assert "cannot be removed" in registered.admin("remove-user", owner, check=False).stderr

    removed = registered.admin("remove-user", "dora", "--give-projects-to", owner).stdout
    assert "removed user dora and 1 client(s)" in removed
    assert "dora" not in registered.admin("list-users").stdout
    with pytest.raises(NotRegisteredError):
        kcl.get_client_info()  # dora's client is refused from now on
    projects = {p["project_id"]: p for p in json.loads(registered.admin("list-projects", "--json").stdout)}
    assert projects["doras"]["owner"] == owner and projects["doras"]["members"] == {owner: "admin"}


@sqlite_only
def test_every_size_argument_takes_suffixes(registered: RunningServer) -> None:
    registered.admin("create-project", "sized", "--quota", "1K")
    registered.admin("set-quota", "default", "2.5M")
    projects = {p["project_id"]: p for p in json.loads(registered.admin("list-projects", "--json").stdout)}
    assert projects["sized"]["storage_quota_bytes"] == 1024
    assert projects["default"]["storage_quota_bytes"] == int(2.5 * (1 << 20))
    registered.admin("set-quota", "default", "none")
    bad = registered.admin("create-project", "badly-sized", "--quota", "1X", check=False)
    assert bad.returncode == 2 and "is not a size" in bad.stderr and "Traceback" not in bad.stderr
    bad = registered.admin("invite", "default", "--role", "read", "--expires", "soon", check=False)
    assert bad.returncode == 2 and "is not a duration" in bad.stderr


@sqlite_only
def test_a_link_opened_in_a_browser_says_what_to_run_and_stays_unused(
    registered: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import requests

    link = invite(registered, "default", "read")
    page = requests.get(link, timeout=30)
    assert page.status_code == 200 and f"kachery-cloud-init --invite {link}" in page.text
    join(monkeypatch, tmp_path / "after-looking", link)  # looking did not use it up
    used = requests.get(link, timeout=30)
    assert used.status_code == 409 and "already used" in used.text
    forged = requests.get(link.rsplit("/", 1)[0] + "/<script>alert(1)</script>", timeout=30)
    assert forged.status_code == 404 and "<script>" not in forged.text


@sqlite_only
def test_names_cannot_be_squatted_or_taken_over_with_a_link(
    registered: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kachery_cloud._connection import api_client

    # A person who picks a name that passes for an email or for the owner's gets it without "@".
    switch_client(monkeypatch, tmp_path / "squatter", register=False)
    token = invite(registered, "default", "read").rsplit("/", 1)[1]
    owner = next(u["name"] for u in json.loads(registered.admin("list-users", "--json").stdout) if u["local_owner"])
    answer = api_client().call(
        "POST", "/api/invitations/accept", json_body={"token": token, "label": "x", "user_name": owner}
    )
    assert "@" not in answer["client"]["user"] and answer["client"]["user"] != owner
    # A name an invitation reserves is made at once: nobody takes it before the link is used.
    link = invite(registered, "default", "write", "--user", "erin")
    assert "erin" in {u["name"] for u in json.loads(registered.admin("list-users", "--json").stdout)}
    join(monkeypatch, tmp_path / "erin", link)
    # Once erin has a client, a link naming her would hand over her account: only for another machine of hers.
    refused = registered.admin("invite", "default", "--role", "read", "--user", "erin", check=False)
    assert refused.returncode == 1 and "already has registered clients" in refused.stderr
    second = invite(registered, "default", "read", "--user", "erin", "--add-client")
    assert join(monkeypatch, tmp_path / "erins-laptop", second)["user"] == "erin"
