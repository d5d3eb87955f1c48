"""The API client's retries, timeouts and error mapping, against a real local HTTP server that misbehaves on
purpose (fault injection at the HTTP edge; the API server itself is tested in tests/api_server)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import kachery_cloud as kcl
from kachery_cloud.api.client import ApiClient
from kachery_cloud.protocol.request_signing import HEADER_NONCE

from ..helpers import new_identity
from ..servers import free_port


class Script:
    """Responses to hand out in order: (status, body, headers); the last one repeats. ``GET /api/health`` is
    answered apart, with ``server_ids`` in turn (the last one repeats), and not recorded."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, dict, dict]] = []
        self.requests: list[dict] = []
        self.server_ids = ["5e" * 16]
        self.health_asked = 0


@pytest.fixture
def fake() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.path == "/api/health":
                server_id = script.server_ids[min(script.health_asked, len(script.server_ids) - 1)]
                script.health_asked += 1
                self._send(200, {"status": "ok", "server_id": server_id}, {})
                return
            script.requests.append(
                {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
            )
            index = min(len(script.requests), len(script.responses)) - 1
            self._send(*script.responses[index])

        def _send(self, status: int, payload: dict, headers: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()


def test_503_is_retried_with_a_fresh_signature_and_retry_after_is_honoured(fake: tuple[str, Script]) -> None:
    url, script = fake
    script.responses = [
        (503, {"error_code": "unavailable", "message": "busy"}, {"Retry-After": "1"}),
        (200, {"ok": True}, {}),
    ]
    client = ApiClient(url, new_identity())
    started = time.monotonic()
    assert client.call("POST", "/api/x", json_body={"a": 1}, idempotent=False) == {"ok": True}
    assert time.monotonic() - started >= 1.0
    nonces = [r["headers"][HEADER_NONCE] for r in script.requests]
    assert len(nonces) == 2 and nonces[0] != nonces[1]


def test_requests_are_signed_for_the_server_and_signed_again_when_it_is_another(fake: tuple[str, Script]) -> None:
    from kachery_cloud.protocol.request_signing import HEADER_SERVER_ID

    url, script = fake
    script.server_ids = ["5e" * 16, "7a" * 16]  # the server was replaced (a new database) after the first ask
    script.responses = [
        (200, {"ok": 1}, {}),
        (401, {"error_code": "wrong_server", "message": "signed for another server"}, {}),
        (200, {"ok": 2}, {}),
    ]
    client = ApiClient(url, new_identity())
    assert client.call("POST", "/api/x", json_body={}) == {"ok": 1}
    assert client.call("POST", "/api/x", json_body={}, idempotent=False) == {"ok": 2}
    assert [r["headers"][HEADER_SERVER_ID] for r in script.requests] == ["5e" * 16, "5e" * 16, "7a" * 16]
    assert script.health_asked == 2


def test_a_server_that_names_no_server_id_is_reported_as_too_old(fake: tuple[str, Script]) -> None:
    url, script = fake
    script.server_ids = [None]  # type: ignore[list-item]
    script.responses = [(200, {"ok": True}, {})]
    with pytest.raises(kcl.ServerError, match="older kachery-cloud-server") as error:
        ApiClient(url, new_identity()).call("GET", "/api/x")
    assert error.value.error_code == "server_too_old"
    assert script.requests == []  # nothing was sent unsigned in its place


def test_429_is_retried_then_reported(fake: tuple[str, Script]) -> None:
    url, script = fake
    script.responses = [(429, {"error_code": "rate_limited", "message": "slow down"}, {"Retry-After": "0"})]
    client = ApiClient(url, new_identity(), max_attempts=3)
    with pytest.raises(kcl.RateLimitedError, match="slow down"):
        client.call("GET", "/api/x")
    assert len(script.requests) == 3


def test_a_retry_after_of_many_minutes_is_reported_at_once(fake: tuple[str, Script]) -> None:
    url, script = fake  # e.g. too many pending registrations from this address: 15 minutes
    script.responses = [(429, {"error_code": "rate_limited", "message": "too many"}, {"Retry-After": "900"})]
    started = time.monotonic()
    with pytest.raises(kcl.RateLimitedError, match="try again in 15 minutes"):
        ApiClient(url, new_identity(), max_attempts=3).call("GET", "/api/x")
    assert len(script.requests) == 1 and time.monotonic() - started < 10


def test_500_is_retried_only_for_idempotent_calls(fake: tuple[str, Script]) -> None:
    url, script = fake
    script.responses = [(500, {"error_code": "internal_error", "message": "boom"}, {})]
    client = ApiClient(url, new_identity(), max_attempts=3)
    with pytest.raises(kcl.ServerError, match="boom") as error:
        client.call("POST", "/api/append", json_body={}, idempotent=False)
    assert error.value.error_code == "internal_error" and error.value.status == 500
    assert len(script.requests) == 1
    with pytest.raises(kcl.ServerError):
        client.call("GET", "/api/read")
    assert len(script.requests) == 4


@pytest.mark.parametrize(
    ("code", "status", "cls", "text"),
    [
        ("client_not_registered", 401, kcl.NotRegisteredError, "kachery-cloud-init"),
        ("not_a_member", 403, kcl.PermissionDeniedError, "not a member"),
        ("stale_timestamp", 401, kcl.AuthenticationError, "clock"),
        ("project_not_found", 404, kcl.ServerError, "no such project"),
    ],
)
def test_error_codes_map_to_exceptions_with_actionable_messages(
    fake: tuple[str, Script], code: str, status: int, cls: type, text: str
) -> None:
    url, script = fake
    messages = {"not_a_member": "alice is not a member of project p", "stale_timestamp": "check this machine's clock"}
    script.responses = [(status, {"error_code": code, "message": messages.get(code, "no such project")}, {})]
    with pytest.raises(cls, match=text) as error:
        ApiClient(url, new_identity()).call("GET", "/api/x")
    assert error.value.error_code == code
    assert len(script.requests) == 1  # 4xx are not retried


def test_an_unreachable_server_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = ApiClient(url, new_identity(), max_attempts=2, unreachable_budget_sec=0)
    with pytest.raises(kcl.ServerUnreachableError, match=url) as error:
        client.call("GET", "/api/health")
    assert isinstance(error.value, ConnectionError)
    assert "KACHERY_CLOUD_API_URL" in str(error.value)


def test_kcl_functions_report_an_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """After KACHERY_CLOUD_RETRY_SEC (the default 20 s, which rides out a restart, is what
    tests/reliability/test_server_restarts.py relies on)."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("KACHERY_CLOUD_API_URL", url)
    retry_sec = "2"
    monkeypatch.setenv("KACHERY_CLOUD_RETRY_SEC", retry_sec)
    from kachery_cloud._connection import forget_clients

    forget_clients()
    started = time.monotonic()
    with pytest.raises(kcl.ServerUnreachableError, match="connection refused"):
        kcl.get_client_info()
    waited = time.monotonic() - started
    budget = float(retry_sec)
    assert budget <= waited < budget + 25, waited  # the last pause may start just before the budget ends


def test_a_bad_retry_setting_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("soon", "-1", "nan", "1e9"):
        monkeypatch.setenv("KACHERY_CLOUD_RETRY_SEC", bad)
        with pytest.raises(kcl.ConfigError, match="KACHERY_CLOUD_RETRY_SEC"):
            kcl.get_client_info()


def test_a_server_that_never_answers_is_reported_after_retries() -> None:
    # A server that accepts connections but never answers: a raw socket that counts them and stays silent.
    import socket

    accepted: list[socket.socket] = []
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(5)

        def accept_all() -> None:
            with contextlib.suppress(OSError):
                while True:
                    accepted.append(silent.accept()[0])

        threading.Thread(target=accept_all, daemon=True).start()
        port = silent.getsockname()[1]
        stuck = ApiClient(f"http://127.0.0.1:{port}", new_identity(), timeout=(1.0, 0.3), max_attempts=2)
        with pytest.raises(kcl.ServerUnreachableError, match="did not answer"):
            stuck.call("GET", "/api/x")
        assert len(accepted) == 2  # a GET is safe to repeat: it was sent twice before giving up
    for connection in accepted:
        connection.close()


def test_anonymous_clients_send_no_signature(fake: tuple[str, Script]) -> None:
    url, script = fake
    script.responses = [(200, {}, {})]
    ApiClient(url, None).call("GET", "/api/projects/p")
    assert HEADER_NONCE not in script.requests[0]["headers"]
