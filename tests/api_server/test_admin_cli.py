"""kachery-cloud-server admin commands, against a running server's database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

import kachery_cloud as kcl

from ..servers import RunningServer, clean_env


def test_create_project_add_member_set_public_and_list(connected: RunningServer) -> None:
    connected.admin("create-project", "ephys-2026", "--label", "Ephys 2026", "--quota", "1000000")
    connected.admin("add-member", "ephys-2026", "dana@example.org", "--role", "write")
    connected.admin("add-member", "ephys-2026", "dana@example.org", "--role", "read")  # changes the role
    connected.admin("set-public", "ephys-2026", "true")
    rows = {r["project_id"]: r for r in json.loads(connected.admin("list-projects", "--json").stdout)}
    project = rows["ephys-2026"]
    assert project["label"] == "Ephys 2026"
    assert project["public_read"] is True
    assert project["storage_quota_bytes"] == 1000000
    assert project["members"]["dana@example.org"] == "read"
    assert project["members"][project["owner"]] == "admin"
    # Anyone may read a public project, signed or not.
    assert requests.get(f"{connected.url}/api/projects/ephys-2026").json()["public_read"] is True
    connected.admin("set-public", "ephys-2026", "false")
    private = requests.get(f"{connected.url}/api/projects/ephys-2026")
    assert private.status_code == 404 and private.json()["error_code"] == "project_not_found"
    connected.admin("remove-member", "ephys-2026", "dana@example.org")
    rows = {r["project_id"]: r for r in json.loads(connected.admin("list-projects", "--json").stdout)}
    assert "dana@example.org" not in rows["ephys-2026"]["members"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create-project", "Bad Id!"), "invalid project id"),
        (("create-project", "default"), "already exists"),
        (("add-member", "no-such-project", "x@example.org"), "does not exist"),
        (("add-member", "default", "nobody-without-at"), "neither a known user name nor an email"),
        (("set-public", "no-such-project", "true"), "does not exist"),
        (("remove-client", "ab" * 32), "is not registered"),
        (("register-client", "xyz", "--label", "ci"), "invalid client id"),
    ],
)
def test_admin_errors_are_one_clear_line(connected: RunningServer, args: tuple[str, ...], message: str) -> None:
    result = connected.admin(*args, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_owner_cannot_be_demoted(connected: RunningServer) -> None:
    owner = json.loads(connected.admin("list-projects", "--json").stdout)[0]["owner"]
    result = connected.admin("add-member", "default", owner, "--role", "read", check=False)
    assert result.returncode == 1 and "stays its admin" in result.stderr


def test_register_client_for_a_ci_machine(connected: RunningServer) -> None:
    result = connected.admin("register-client", "--label", "github-ci")
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert set(lines) == {"KACHERY_CLOUD_CLIENT_ID", "KACHERY_CLOUD_PRIVATE_KEY"}
    env = clean_env(
        KACHERY_CLOUD_API_URL=connected.url,
        KACHERY_CLOUD_DIR="/nonexistent/kachery-ci",  # no key files needed
        **lines,
    )
    info = subprocess.run(
        [sys.executable, "-m", "kachery_cloud", "info"], env=env, capture_output=True, text=True, timeout=60
    )
    assert info.returncode == 0, info.stderr
    assert lines["KACHERY_CLOUD_CLIENT_ID"] in info.stdout
    assert "Label: github-ci" in info.stdout
    listed = connected.admin("list-clients", "--json").stdout
    assert lines["KACHERY_CLOUD_CLIENT_ID"] in listed
    # The private key never reaches the database or the listing.
    assert lines["KACHERY_CLOUD_PRIVATE_KEY"] not in listed


def test_register_an_existing_public_key_then_remove_it(connected: RunningServer) -> None:
    client_id = kcl.get_client_id()
    connected.admin("register-client", client_id, "--label", "workstation")
    assert kcl.get_client_info()["label"] == "workstation"
    connected.admin("remove-client", client_id)
    with pytest.raises(kcl.NotRegisteredError):
        kcl.get_client_info()
