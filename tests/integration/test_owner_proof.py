"""Only the Unix user who runs the server is its owner: another real Unix user of the server's machine who runs
kachery-cloud-init is refused with a way in (an invitation), and with one gets its role and nothing of the
owner's. Needs root (to make the user); skipped otherwise."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

import kachery_cloud as kcl
from kachery_cloud.identity import ClientIdentity
from kachery_cloud.protocol.owner_proof import owner_proof

from ..helpers import new_identity, server_id_of, signed_headers, switch_client
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


def register_with_proof(server: RunningServer, identity: ClientIdentity, proof: str) -> requests.Response:
    body = json.dumps({"label": "guess", "owner_proof": proof}).encode()
    headers = signed_headers(identity, "POST", "/api/clients/register", body, server=server.url)
    return requests.post(
        f"{server.url}/api/clients/register",
        data=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=30,
    )


def test_a_guessed_replayed_or_misdirected_owner_proof_is_refused(registered: RunningServer) -> None:
    token_file = registered.data_dir / "owner-token"
    assert token_file.stat().st_mode & 0o077 == 0  # only the server's user can read it
    token, server_id = registered.owner_token(), server_id_of(registered.url)
    attacker, victim = new_identity(), new_identity()
    forged = {
        "a guessed token": owner_proof("A" * 43, server_id, attacker.client_id),
        "the victim's proof, replayed with another key": owner_proof(token, server_id, victim.client_id),
        "a proof made for another server": owner_proof(token, "0" * 32, attacker.client_id),
        "the token itself": token,
        "nothing": "",
    }
    for what, proof in forged.items():
        response = register_with_proof(registered, attacker, proof)
        assert response.status_code in (403, 422), f"{what}: {response.text}"
        assert response.status_code == 422 or response.json()["error_code"] == "wrong_owner_token", what
    clients = {c["client_id"] for c in json.loads(registered.admin("list-clients", "--json").stdout)}
    assert attacker.client_id not in clients
    # The control: the right proof, for the key that signs, registers it as the owner.
    assert register_with_proof(registered, victim, registered.owner_proof(victim.client_id)).status_code == 200


def test_a_fake_server_on_this_machine_gets_nothing_it_can_use(
    registered: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """While the owner's real server is down (or beside it), a local user's fake server asks the owner's init for
    the proof, naming the real token file. Init makes one, but it only registers the owner's own key there."""
    captured: list[dict] = []

    class Fake(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/api/health":
                self._answer(200, {"status": "ok", "server_id": "f" * 32, "signature_window_sec": 60})
            else:
                self._answer(401, {"error_code": "client_not_registered", "message": "register"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            captured.append(body)
            if "owner_proof" not in body:
                token_file = str(registered.data_dir / "owner-token")
                self._answer(
                    403, {"error_code": "owner_proof_required", "message": "prove", "owner_token_file": token_file}
                )
            else:
                self._answer(500, {"error_code": "internal_error", "message": "no"})

        def _answer(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: object) -> None:
            pass

    fake = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    try:
        switch_client(monkeypatch, tmp_path / "owner", register=False)
        monkeypatch.setenv("KACHERY_CLOUD_API_URL", f"http://127.0.0.1:{fake.server_address[1]}")
        monkeypatch.setenv("KACHERY_CLOUD_RETRY_SEC", "0")
        with pytest.raises(kcl.KacheryCloudError):
            kcl.init(quiet=True)
    finally:
        fake.shutdown()
    proofs = [body["owner_proof"] for body in captured if "owner_proof" in body]
    assert len(proofs) == 1 and registered.owner_token() not in json.dumps(captured)  # never the token itself
    attacker = new_identity()
    refused = register_with_proof(registered, attacker, proofs[0])
    assert refused.status_code == 403 and refused.json()["error_code"] == "wrong_owner_token"


def _store_in(monkeypatch: pytest.MonkeyPatch, project: str) -> str:
    """Store a value in ``project`` as the owner (this process's registered client)."""
    with monkeypatch.context() as scoped:
        scoped.setenv("KACHERY_CLOUD_PROJECT", project)
        return kcl.store_json({"private to": project})
