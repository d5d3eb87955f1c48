"""Per-client rate limits: 429 with Retry-After, counted by verified client id (nobody can spend another
client's budget by naming it), unsigned and forged requests by address, and waited out by the client."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import kachery_cloud as kcl
from kachery_cloud.api.client import ApiClient
from kachery_cloud.identity import ClientIdentity
from kachery_cloud.protocol.request_signing import HEADER_CLIENT_ID

from ..conftest import point_client_at
from ..helpers import new_identity, server_id_of
from ..servers import RunningServer, start_server
from .conftest import Figure, Figures

PER_SECOND = 4
# Debug level turns on the access log, where the 429s a client received are counted.
SETTINGS = {
    "rate_limit_per_client": f"{PER_SECOND}/second",
    "rate_limit_per_address": f"{PER_SECOND}/second",
    "log_level": "debug",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("rate-limited"), settings=SETTINGS)
    yield server
    server.stop()


def registered_identity(server: RunningServer) -> ClientIdentity:
    """A fresh client registered for the server's owner, as a second machine of the same person would be."""
    identity = new_identity()
    body = json.dumps({"label": "rate-limit test", "owner_proof": server.owner_proof(identity.client_id)}).encode()
    for _ in range(3):
        headers = {
            "Content-Type": "application/json",
            **identity.signed_headers("POST", "/api/clients/register", body, server_id_of(server.url)),
        }
        response = requests.post(f"{server.url}/api/clients/register", data=body, headers=headers, timeout=10)
        if response.status_code != 429:  # 429: the address limit, after an earlier test's forged requests
            break
        time.sleep(float(response.headers["Retry-After"]))
    assert response.status_code == 200, response.text
    time.sleep(1.0)  # a fresh window for what the test measures
    return identity


def burst(server: RunningServer, identity: ClientIdentity, count: int) -> list[requests.Response]:
    return [
        requests.get(
            f"{server.url}/api/clients/me",
            headers=identity.signed_headers("GET", "/api/clients/me", b"", server_id_of(server.url)),
            timeout=10,
        )
        for _ in range(count)
    ]


def test_a_client_over_its_limit_gets_429_with_retry_after(limited: RunningServer) -> None:
    identity = registered_identity(limited)
    responses = burst(limited, identity, 3 * PER_SECOND)
    statuses = [r.status_code for r in responses]
    assert statuses[:PER_SECOND].count(200) >= PER_SECOND - 1  # the window may straddle a second boundary
    refused = [r for r in responses if r.status_code == 429]
    assert refused, statuses
    for response in refused:
        body = response.json()
        assert body["error_code"] == "rate_limited" and "try again" in body["message"]
        assert response.headers["Retry-After"] == "1"  # the window is one second
    assert set(statuses) <= {200, 429}


def test_one_client_over_its_limit_does_not_slow_another(limited: RunningServer) -> None:
    greedy, other = registered_identity(limited), registered_identity(limited)
    assert 429 in [r.status_code for r in burst(limited, greedy, 3 * PER_SECOND)]
    assert burst(limited, other, 1)[0].status_code == 200


def test_forged_requests_naming_a_client_do_not_spend_its_budget(limited: RunningServer) -> None:
    victim, forger = registered_identity(limited), new_identity()
    forged_statuses = []
    for _ in range(3 * PER_SECOND):
        headers = forger.signed_headers("GET", "/api/clients/me", b"", server_id_of(limited.url))
        headers[HEADER_CLIENT_ID] = victim.client_id  # signed by the forger's key, claiming the victim's id
        forged_statuses.append(requests.get(f"{limited.url}/api/clients/me", headers=headers, timeout=10).status_code)
    # Refused as forged, then cut short by the address limit: never served.
    assert set(forged_statuses) <= {401, 429} and 401 in forged_statuses and 429 in forged_statuses
    assert burst(limited, victim, 1)[0].status_code == 200


def test_unsigned_requests_are_limited_by_address(limited: RunningServer) -> None:
    statuses = [
        requests.post(
            f"{limited.url}/api/blobs/find", json={"project_id": "default", "sha1s": []}, timeout=10
        ).status_code
        for _ in range(3 * PER_SECOND)
    ]
    assert 429 in statuses, statuses


def test_the_client_waits_out_429_and_every_call_succeeds(
    limited: RunningServer, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    point_client_at(limited, monkeypatch)
    kcl.init(quiet=True)
    refusals_before = count_429s(limited)
    calls = 5 * PER_SECOND
    uris = [kcl.store_json({"call": i, "salt": secrets.token_hex(4)}) for i in range(calls)]
    refusals = count_429s(limited) - refusals_before
    assert refusals > 0, "the limit never bit: the test shows nothing"
    # A client that retried without waiting for Retry-After would collect many refusals per call.
    assert refusals <= calls, f"{refusals} refusals for {calls} calls: the client did not wait out Retry-After"
    assert [kcl.load_json(uri)["call"] for uri in uris[:3]] == [0, 1, 2]
    figures.record(
        Figure(
            item="7 rate limit honoured by the client",
            runs=calls,
            faults=refusals,
            errors=0,
            details={"limit": f"{PER_SECOND}/second"},
        )
    )


def test_a_client_that_may_not_retry_reports_the_limit_clearly(limited: RunningServer, kachery_dir: Path) -> None:
    identity = registered_identity(limited)
    client = ApiClient(limited.url, identity, max_attempts=1)
    with pytest.raises(kcl.RateLimitedError, match="too many requests") as error:
        for _ in range(3 * PER_SECOND):
            client.call("GET", "/api/clients/me")
    assert error.value.status == 429


def count_429s(server: RunningServer) -> int:
    return len(re.findall(r'" 429\b', server.log()))


def test_a_shared_storage_that_hangs_lets_requests_through_and_is_not_asked_by_each() -> None:
    """rate_limit_storage names a Redis that accepts connections and never answers (a hung host): requests over
    the limit go through uncounted, and only one of them waited for it; the next ones skip it for a while."""
    import socket
    import threading

    from api_server.rate_limits import RateLimiter

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: [accepted.append(listener.accept()[0]) for _ in range(16)], daemon=True).start()
    try:
        limiter = RateLimiter("2/minute", "2/minute", f"redis://127.0.0.1:{listener.getsockname()[1]}/0")
        for _ in range(5):  # over the limit of 2: none refused, since nothing could count them
            limiter.client_request("c" * 64)
            limiter.address_request("127.0.0.9")
        assert len(accepted) == 1  # one connection, by the first request; the storage was then left alone
    finally:
        listener.close()
        for connection in accepted:
            connection.close()
