"""Only the Unix user who runs the server is its owner: another real Unix user of the server's machine who runs
kachery-cloud-init is refused with a way in (an invitation), and with one gets its role and nothing of the
owner's. Needs root (to make the user); skipped otherwise."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import kachery_cloud as kcl

from ..helpers import new_identity, signed_headers
from ..servers import RunningServer
from .multiuser_runtime import LabUser, build_runtime, ensure_lab_users, is_root, run_as

pytestmark = [
    pytest.mark.skipif(not is_root(), reason="making a second Unix user needs root"),
    # The proof is decided before the database is asked anything: SQLite is enough.
    pytest.mark.parametrize("server", ["sqlite"], indirect=True),
]

REGISTER = """
import json, sys
import kachery_cloud as kcl
from kachery_cloud.errors import KacheryCloudError
try:
    info = kcl.init(quiet=True, invite=sys.argv[1] if len(sys.argv) > 1 else None)
except KacheryCloudError as e:
    print(json.dumps({"refused": str(e), "error_code": getattr(e, "error_code", None)}))
else:
    out = {"user": info["user"], "roles": {p["project_id"]: p["role"] for p in info["projects"]}}
    out["stored"] = kcl.store_json({"by": "alice"})
    out["read_owners_private"] = kcl.load_json(sys.argv[2])  # None: not found
    print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def alice() -> Iterator[tuple[LabUser, str, dict[str, str], Path]]:
    user = ensure_lab_users()[0]
    base = Path(tempfile.mkdtemp(prefix="kc-owner-proof-"))
    base.chmod(0o755)
    try:
        interpreter, env = build_runtime(base / "runtime", user, network=True)
        home = base / "alice"
        home.mkdir(mode=0o700)
        os.chown(home, user.uid, user.gid)
        yield user, interpreter, {**env, "KACHERY_CLOUD_DIR": str(home / "kachery-cloud")}, base
    finally:
        shutil.rmtree(base)


def test_another_unix_user_is_not_made_the_owner_and_joins_by_invitation(
    registered: RunningServer, alice: tuple[LabUser, str, dict[str, str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    user, interpreter, env, _ = alice
    env = {**env, "KACHERY_CLOUD_API_URL": registered.url}
    registered.admin("create-project", "owners-private")
    private_uri = _store_in(monkeypatch, "owners-private")
    clients_before = len(json.loads(registered.admin("list-clients", "--json").stdout))

    refused = run_as(user, interpreter, REGISTER, env)
    answer = json.loads(refused.stdout or "{}")
    assert answer.get("error_code") == "owner_proof_required", refused.stdout + refused.stderr
    assert "kachery-cloud-init --invite LINK" in answer["refused"] and user.name in answer["refused"]
    assert len(json.loads(registered.admin("list-clients", "--json").stdout)) == clients_before

    link = registered.admin("invite", "default", "--role", "write").stdout.strip()
    joined = run_as(user, interpreter, REGISTER, env, link, private_uri)
    answer = json.loads(joined.stdout or "{}")
    assert answer.get("roles") == {"default": "write"}, joined.stdout + joined.stderr
    assert answer["user"] == user.name and answer["stored"].startswith("sha1://")
    assert answer["read_owners_private"] is None  # a private project of the owner's is as good as absent to her
    assert kcl.load_json(private_uri) == {"private to": "owners-private"}  # which it is not to the owner
    users = {u["name"]: u for u in json.loads(registered.admin("list-users", "--json").stdout)}
    assert users[user.name]["local_owner"] is False


def test_a_guessed_or_stale_owner_token_is_refused(registered: RunningServer) -> None:
    token_file = registered.data_dir / "owner-token"
    assert token_file.stat().st_mode & 0o077 == 0  # only the server's user can read it
    identity = new_identity()
    for guess in ("A" * 43, token_file.read_text().strip()[:-1] + "x", ""):
        body = json.dumps({"label": "guess", "owner_token": guess}).encode()
        response = requests.post(
            f"{registered.url}/api/clients/register",
            data=body,
            headers={
                "Content-Type": "application/json",
                **signed_headers(identity, "POST", "/api/clients/register", body, server=registered.url),
            },
            timeout=30,
        )
        assert response.status_code == 403 and response.json()["error_code"] == "wrong_owner_token", response.text
    clients = json.loads(registered.admin("list-clients", "--json").stdout)
    assert identity.client_id not in {c["client_id"] for c in clients}


def _store_in(monkeypatch: pytest.MonkeyPatch, project: str) -> str:
    """Store a value in ``project`` as the owner (this process's registered client)."""
    with monkeypatch.context() as scoped:
        scoped.setenv("KACHERY_CLOUD_PROJECT", project)
        return kcl.store_json({"private to": project})
