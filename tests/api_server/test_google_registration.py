"""Google-mode registration end to end: a locally generated RSA key stands in for Google's, its certificate
served from a local certs endpoint; kachery-cloud-init runs as a real process and polls until linked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import kachery_cloud as kcl
from kachery_cloud.api.client import ApiClient

from ..google_kit import GOOGLE_CLIENT_ID, FakeGoogleKeys
from ..helpers import new_identity
from ..servers import PostgresDatabases, RunningServer, clean_env, start_server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def google_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres: PostgresDatabases,
    google_keys: tuple[FakeGoogleKeys, str],
) -> Iterator[RunningServer]:
    database_url = postgres.create() if request.param == "postgresql" else None
    settings = {"google_client_id": GOOGLE_CLIENT_ID, "google_certs_url": google_keys[1]}
    running = start_server(tmp_path_factory.mktemp("google-server"), database_url=database_url, settings=settings)
    yield running
    running.stop()


class InitProcess:
    """``kachery-cloud-init`` running in its own process, read line by line."""

    def __init__(self, server: RunningServer, client_dir: Path) -> None:
        env = clean_env(KACHERY_CLOUD_DIR=str(client_dir), KACHERY_CLOUD_API_URL=server.url)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from kachery_cloud.cli import init; init()"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []

    def read_until(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"init ended early: {self.lines} {self.process.stderr.read()}")  # type: ignore[union-attr]
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no {pattern!r} in {self.lines}")

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, "".join(self.lines) + out, err


def start_init(server: RunningServer, tmp_path: Path) -> tuple[InitProcess, str, str]:
    init = InitProcess(server, tmp_path / "client")
    url = init.read_until(r"(http://\S+/register/(\S+))")
    code = init.read_until(r"code: ([A-Z0-9]{4}-[A-Z0-9]{4})").group(1)
    return init, url.group(1), code


def test_init_prints_a_link_and_completes_when_the_person_signs_in(
    google_server: RunningServer, google_keys: tuple[FakeGoogleKeys, str], tmp_path: Path
) -> None:
    keys, _ = google_keys
    init, link, code = start_init(google_server, tmp_path)
    page = requests.get(link)
    assert page.status_code == 200
    assert GOOGLE_CLIENT_ID in page.text and "accounts.google.com/gsi/client" in page.text
    # The page asks for the code; showing it would let a phished person link someone else's machine.
    assert code not in page.text
    registration_id = link.rsplit("/", 1)[1]
    time.sleep(1)  # init is polling meanwhile; it must still be waiting
    assert init.process.poll() is None
    answer = requests.post(
        f"{google_server.url}/api/registrations/{registration_id}/google",
        json={"credential": keys.id_token(sub="g-alice", email="alice@example.org"), "verification_code": code.lower()},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"] == "alice@example.org"
    returncode, out, err = init.finish()
    assert returncode == 0, err
    assert "Owner: alice@example.org" in out
    # A new Google user gets a personal project as default.
    assert re.search(r"Default project: [0-9a-f]{12}", out)
    page_after = requests.get(link)
    assert "is registered" in page_after.text


def test_a_person_added_by_email_before_signing_in_gets_that_project(
    google_server: RunningServer, google_keys: tuple[FakeGoogleKeys, str], tmp_path: Path
) -> None:
    keys, _ = google_keys
    google_server.admin("create-project", "bob-lab")
    google_server.admin("add-member", "bob-lab", "Bob@Example.org", "--role", "write")
    init, link, code = start_init(google_server, tmp_path)
    registration_id = link.rsplit("/", 1)[1]
    token = keys.id_token(sub="g-bob", email="bob@example.org")
    answer = requests.post(
        f"{google_server.url}/api/registrations/{registration_id}/google",
        json={"credential": token, "verification_code": code},
    )
    assert answer.status_code == 200, answer.text
    returncode, out, err = init.finish()
    assert returncode == 0, err
    assert "Default project: bob-lab" in out
    assert "bob-lab (write)" in out


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "someone-else.apps.googleusercontent.com"},
        {"iss": "https://evil.example.org"},
        {"email_verified": False},
        {"email": None},
        {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200},
    ],
    ids=["wrong-audience", "wrong-issuer", "unverified-email", "no-email", "expired"],
)
def test_bad_id_tokens_are_refused_and_link_nothing(
    google_server: RunningServer, google_keys: tuple[FakeGoogleKeys, str], tmp_path: Path, claims: dict
) -> None:
    keys, _ = google_keys
    init, link, code = start_init(google_server, tmp_path)
    try:
        registration_id = link.rsplit("/", 1)[1]
        answer = requests.post(
            f"{google_server.url}/api/registrations/{registration_id}/google",
            json={
                "verification_code": code,
                "credential": keys.id_token(**{"sub": "g-mallory", "email": "mallory@example.org", **claims}),
            },
        )
        assert answer.status_code == 401, answer.text
        assert answer.json()["error_code"] == "invalid_id_token"
        assert init.process.poll() is None  # still waiting
    finally:
        init.process.kill()
        init.process.wait()
    assert "mallory" not in google_server.admin("list-users").stdout


def test_a_token_signed_by_another_key_is_refused(
    google_server: RunningServer, google_keys: tuple[FakeGoogleKeys, str], tmp_path: Path
) -> None:
    impostor = FakeGoogleKeys()  # same key id, different key: not the one the certs endpoint publishes
    init, link, code = start_init(google_server, tmp_path)
    try:
        answer = requests.post(
            f"{google_server.url}/api/registrations/{link.rsplit('/', 1)[1]}/google",
            json={"credential": impostor.id_token(sub="g-eve", email="eve@example.org"), "verification_code": code},
        )
        assert answer.status_code == 401
        assert answer.json()["error_code"] == "invalid_id_token"
    finally:
        init.process.kill()
        init.process.wait()


def test_unknown_registration_links_and_foreign_polls_are_refused(
    google_server: RunningServer, google_keys: tuple[FakeGoogleKeys, str], tmp_path: Path
) -> None:
    keys, _ = google_keys
    page = requests.get(f"{google_server.url}/register/no-such-registration")
    assert page.status_code == 404
    answer = requests.post(
        f"{google_server.url}/api/registrations/no-such-registration/google",
        json={"credential": keys.id_token(), "verification_code": "AAAA-BBBB"},
    )
    assert answer.status_code == 404
    assert answer.json()["error_code"] == "registration_not_found"
    poll = requests.get(f"{google_server.url}/api/registrations/no-such-registration")
    assert poll.status_code == 404

    init, link, _code = start_init(google_server, tmp_path)
    try:
        registration_id = link.rsplit("/", 1)[1]
        with pytest.raises(kcl.PermissionDeniedError) as refused:
            ApiClient(google_server.url, new_identity()).call("GET", f"/api/registrations/{registration_id}")
        assert refused.value.error_code == "not_your_registration"
    finally:
        init.process.kill()
        init.process.wait()


def test_an_email_owned_by_another_google_account_is_a_conflict(
    google_server: RunningServer, google_keys: tuple[FakeGoogleKeys, str], tmp_path: Path
) -> None:
    keys, _ = google_keys
    init, link, code = start_init(google_server, tmp_path)
    try:
        registration = link.rsplit("/", 1)[1]
        first = requests.post(
            f"{google_server.url}/api/registrations/{registration}/google",
            json={"credential": keys.id_token(sub="g-carol", email="carol@example.org"), "verification_code": code},
        )
        assert first.status_code == 200
        init.finish()
        init2, link2, code2 = start_init(google_server, tmp_path / "other")
        other = requests.post(
            f"{google_server.url}/api/registrations/{link2.rsplit('/', 1)[1]}/google",
            json={
                "credential": keys.id_token(sub="g-not-carol", email="carol@example.org"),
                "verification_code": code2,
            },
        )
        assert other.status_code == 409
        assert other.json()["error_code"] == "email_taken"
        init2.process.kill()
        init2.process.wait()
    finally:
        init.process.kill()
        init.process.wait()


def test_a_wrong_code_links_nothing_and_five_close_the_link(
    google_server: RunningServer, google_keys: tuple[FakeGoogleKeys, str], tmp_path: Path
) -> None:
    keys, _ = google_keys
    init, link, code = start_init(google_server, tmp_path)
    endpoint = f"{google_server.url}/api/registrations/{link.rsplit('/', 1)[1]}/google"
    token = keys.id_token(sub="g-phished", email="phished@example.org")
    try:
        for _ in range(5):
            wrong = requests.post(endpoint, json={"credential": token, "verification_code": "ZZZZ-ZZZZ"})
            assert wrong.status_code == 403
            assert wrong.json()["error_code"] == "wrong_verification_code"
        # Even the right code is refused now: guessing is limited to five tries.
        closed = requests.post(endpoint, json={"credential": token, "verification_code": code})
        assert closed.status_code == 410
        returncode, _, err = init.finish()
        assert returncode == 1 and "expired" in err
    finally:
        if init.process.poll() is None:
            init.process.kill()
    assert "phished" not in google_server.admin("list-users").stdout


def test_a_used_link_cannot_link_again_even_after_the_client_was_removed(
    google_server: RunningServer, google_keys: tuple[FakeGoogleKeys, str], tmp_path: Path
) -> None:
    keys, _ = google_keys
    init, link, code = start_init(google_server, tmp_path)
    endpoint = f"{google_server.url}/api/registrations/{link.rsplit('/', 1)[1]}/google"
    token = keys.id_token(sub="g-dave", email="dave@example.org")
    assert requests.post(endpoint, json={"credential": token, "verification_code": code}).status_code == 200
    init.finish()
    client_id = [
        c for c in json.loads(google_server.admin("list-clients", "--json").stdout) if c["user"] == "dave@example.org"
    ]
    google_server.admin("remove-client", client_id[0]["client_id"])
    again = requests.post(endpoint, json={"credential": token, "verification_code": code})
    assert again.status_code == 404  # the removed client's registrations are gone
    assert "dave@example.org" not in google_server.admin("list-clients").stdout
