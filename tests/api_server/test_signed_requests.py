"""Every way of getting a signature wrong is refused, on SQLite and PostgreSQL (real server processes)."""

from __future__ import annotations

import json
import time

import pytest
import requests

import kachery_cloud as kcl
from kachery_cloud.identity import ClientIdentity
from kachery_cloud.protocol.request_signing import (
    HEADER_CLIENT_ID,
    HEADER_NONCE,
    HEADER_SERVER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    SIGNATURE_HEADERS,
    body_digest,
)

from ..helpers import new_identity, server_id_of, signed_headers
from ..servers import RunningServer


@pytest.fixture
def identity(registered: RunningServer) -> ClientIdentity:
    """The identity of this test's client, registered (local mode) through kcl.init by the ``registered`` fixture."""
    from kachery_cloud.config import load_config
    from kachery_cloud.identity import load_identity

    identity = load_identity(load_config())
    assert identity is not None
    return identity


def signed(
    server: RunningServer, identity: ClientIdentity, http_method: str, http_target: str, body: bytes = b"", **kw: object
) -> dict[str, str]:
    return signed_headers(identity, http_method, http_target, body, server=server.url, **kw)


def error_code(response: requests.Response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error_code"]


def test_a_correctly_signed_request_is_accepted(connected: RunningServer, identity: ClientIdentity) -> None:
    response = requests.get(
        f"{connected.url}/api/clients/me", headers=signed(connected, identity, "GET", "/api/clients/me")
    )
    assert response.status_code == 200, response.text
    assert response.json()["client_id"] == identity.client_id


def test_unsigned_request_to_a_private_endpoint_is_refused(connected: RunningServer) -> None:
    response = requests.get(f"{connected.url}/api/clients/me")
    assert response.status_code == 401
    assert error_code(response) == "missing_signature"


def test_partial_signature_headers_are_refused(connected: RunningServer, identity: ClientIdentity) -> None:
    headers = signed(connected, identity, "GET", "/api/clients/me")
    del headers[HEADER_NONCE]
    response = requests.get(f"{connected.url}/api/clients/me", headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "missing_signature"
    assert HEADER_NONCE in response.json()["message"]


@pytest.mark.parametrize(
    "forgery",
    [
        {"method": "POST"},
        {"target": "/api/projects/default"},
        {"body_sha256": body_digest(b'{"label":"x"}')},
    ],
    ids=["other-method", "other-path", "other-body"],
)
def test_signature_over_different_content_is_refused(
    connected: RunningServer, identity: ClientIdentity, forgery: dict
) -> None:
    response = requests.get(
        f"{connected.url}/api/clients/me", headers=signed(connected, identity, "GET", "/api/clients/me", **forgery)
    )
    assert response.status_code == 401
    assert error_code(response) == "bad_signature"


def test_tampered_signature_bits_are_refused(connected: RunningServer, identity: ClientIdentity) -> None:
    headers = signed(connected, identity, "GET", "/api/clients/me")
    sig = headers[HEADER_SIGNATURE]
    headers[HEADER_SIGNATURE] = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    response = requests.get(f"{connected.url}/api/clients/me", headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "bad_signature"


def test_query_string_is_part_of_the_signature(connected: RunningServer, identity: ClientIdentity) -> None:
    headers = signed(connected, identity, "GET", "/api/projects/default?x=1")
    ok = requests.get(f"{connected.url}/api/projects/default?x=1", headers=headers)
    assert ok.status_code == 200, ok.text
    headers = signed(connected, identity, "GET", "/api/projects/default?x=1")
    moved = requests.get(f"{connected.url}/api/projects/default?x=2", headers=headers)
    assert moved.status_code == 401
    assert error_code(moved) == "bad_signature"


@pytest.mark.parametrize("offset_sec", [-61, 61, -3600])
def test_timestamp_outside_the_window_is_refused(
    connected: RunningServer, identity: ClientIdentity, offset_sec: int
) -> None:
    stale = int((time.time() + offset_sec) * 1000)
    response = requests.get(
        f"{connected.url}/api/clients/me",
        headers=signed(connected, identity, "GET", "/api/clients/me", timestamp_ms=stale),
    )
    assert response.status_code == 401
    assert error_code(response) == "stale_timestamp"
    assert "clock" in response.json()["message"]


def test_timestamp_inside_the_window_is_accepted(connected: RunningServer, identity: ClientIdentity) -> None:
    slightly_off = int((time.time() - 50) * 1000)
    response = requests.get(
        f"{connected.url}/api/clients/me",
        headers=signed(connected, identity, "GET", "/api/clients/me", timestamp_ms=slightly_off),
    )
    assert response.status_code == 200, response.text


def test_replayed_request_is_refused(connected: RunningServer, identity: ClientIdentity) -> None:
    headers = signed(connected, identity, "GET", "/api/clients/me")
    first = requests.get(f"{connected.url}/api/clients/me", headers=headers)
    assert first.status_code == 200
    replay = requests.get(f"{connected.url}/api/clients/me", headers=headers)
    assert replay.status_code == 401
    assert error_code(replay) == "replayed_nonce"


def test_a_nonce_is_per_client(connected: RunningServer, identity: ClientIdentity) -> None:
    # Another client may (by chance) use the same nonce: that is not a replay.
    other = new_identity()
    nonce = "ab" * 16
    mine = requests.get(
        f"{connected.url}/api/clients/me", headers=signed(connected, identity, "GET", "/api/clients/me", nonce=nonce)
    )
    assert mine.status_code == 200
    theirs = requests.get(
        f"{connected.url}/api/clients/me", headers=signed(connected, other, "GET", "/api/clients/me", nonce=nonce)
    )
    assert error_code(theirs) == "client_not_registered"


def test_signing_for_another_client_id_is_refused(connected: RunningServer, identity: ClientIdentity) -> None:
    attacker = new_identity()
    # The attacker signs with its own key but claims the registered client's id.
    headers = signed(connected, attacker, "GET", "/api/clients/me", client_id=identity.client_id)
    response = requests.get(f"{connected.url}/api/clients/me", headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "bad_signature"


def test_malformed_headers_are_refused(connected: RunningServer, identity: ClientIdentity) -> None:
    headers = signed(connected, identity, "GET", "/api/clients/me")
    headers[HEADER_CLIENT_ID] = "not-hex"
    response = requests.get(f"{connected.url}/api/clients/me", headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "malformed_signature"


def test_registration_without_the_private_key_is_refused(connected: RunningServer) -> None:
    victim = new_identity()  # someone else's public key, which the attacker knows
    attacker = new_identity()
    body = json.dumps({"label": "stolen"}).encode()
    headers = signed(connected, attacker, "POST", "/api/clients/register", body, client_id=victim.client_id)
    headers["Content-Type"] = "application/json"
    response = requests.post(f"{connected.url}/api/clients/register", data=body, headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "bad_signature"
    unsigned = requests.post(f"{connected.url}/api/clients/register", json={"label": "stolen"})
    assert unsigned.status_code == 401
    listed = connected.admin("list-clients", "--json").stdout
    assert victim.client_id not in listed


def test_a_removed_client_is_no_longer_accepted(connected: RunningServer, identity: ClientIdentity) -> None:
    connected.admin("remove-client", identity.client_id)
    with pytest.raises(kcl.NotRegisteredError, match="kachery-cloud-init"):
        kcl.get_client_info()


def test_an_unregistered_client_asking_for_a_private_project_is_told_to_register(connected: RunningServer) -> None:
    stranger = new_identity()
    response = requests.get(
        f"{connected.url}/api/projects/default", headers=signed(connected, stranger, "GET", "/api/projects/default")
    )
    assert response.status_code == 401
    assert response.json()["error_code"] == "client_not_registered"


@pytest.mark.parametrize("which", ["all", *SIGNATURE_HEADERS])
def test_signature_headers_present_but_empty_are_refused_not_served_as_anonymous(
    connected: RunningServer, identity: ClientIdentity, which: str
) -> None:
    # The fuzzer's case: empty headers and a body that an anonymous caller would be answered 200 for.
    body = json.dumps({"sha1s": [], "project_id": "default"}).encode()
    headers = signed(connected, identity, "POST", "/api/blobs/find", body)
    for name in SIGNATURE_HEADERS if which == "all" else [which]:
        headers[name] = ""
    headers["Content-Type"] = "application/json"
    response = requests.post(f"{connected.url}/api/blobs/find", data=body, headers=headers)
    assert response.status_code == 401, response.text
    assert error_code(response) == "missing_signature"
    # Without any of the headers the same request is anonymous, and answered.
    anonymous = requests.post(f"{connected.url}/api/blobs/find", json={"sha1s": [], "project_id": "default"})
    assert anonymous.status_code == 200 and anonymous.json()["registered"] is False


def test_a_request_signed_for_another_server_is_refused(connected: RunningServer, identity: ClientIdentity) -> None:
    other_server = "ab" * 16
    headers = signed(connected, identity, "GET", "/api/clients/me", server_id=other_server)
    assert headers[HEADER_SERVER_ID] == other_server
    response = requests.get(f"{connected.url}/api/clients/me", headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "wrong_server"
    # Claiming this server while having signed for another one is a signature that does not verify.
    headers = signed(connected, identity, "GET", "/api/clients/me", server_id=other_server)
    headers[HEADER_SERVER_ID] = server_id_of(connected.url)
    response = requests.get(f"{connected.url}/api/clients/me", headers=headers)
    assert error_code(response) == "bad_signature"


def test_a_client_of_the_old_scheme_is_told_to_upgrade(connected: RunningServer, identity: ClientIdentity) -> None:
    """What a kachery-cloud client before request signing named servers sends: the v1 message, no server header."""
    import secrets
    import time as clock

    timestamp, nonce = str(int(clock.time() * 1000)), secrets.token_hex(16)
    v1 = "\n".join(["kachery-cloud-request-v1", "GET", "/api/clients/me", body_digest(b""), timestamp, nonce,
                    identity.client_id]).encode()  # fmt: skip
    headers = {HEADER_CLIENT_ID: identity.client_id, HEADER_TIMESTAMP: timestamp, HEADER_NONCE: nonce,
               HEADER_SIGNATURE: identity.sign(v1)}  # fmt: skip
    response = requests.get(f"{connected.url}/api/clients/me", headers=headers)
    assert response.status_code == 401
    assert error_code(response) == "upgrade_required"
    assert "upgrade the client (pip install --upgrade kachery-cloud)" in response.json()["message"]
