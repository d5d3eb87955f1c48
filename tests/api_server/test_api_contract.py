"""Errors are JSON with a stable error_code; the OpenAPI document is served; migrations match the models."""

from __future__ import annotations

import importlib.metadata
import re
import socket

import pytest
import requests
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from api_server.db.models import Base
from api_server.db.session import Database

from ..servers import PostgresDatabases, RunningServer


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/api/no-such-endpoint", None, 404, "not_found"),
        ("DELETE", "/api/health", None, 405, "method_not_allowed"),
        ("GET", "/api/projects/no-such-project", None, 404, "project_not_found"),
        ("GET", "/api/projects/default", None, 404, "project_not_found"),  # private: as if it did not exist
        ("POST", "/api/registrations/x/google", {"credential": ""}, 422, "invalid_request"),
        ("POST", "/api/registrations/x/google", "not json", 422, "invalid_request"),
    ],
)
def test_every_error_is_json_with_an_error_code(
    server: RunningServer, method: str, path: str, body: object, status: int, code: str
) -> None:
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    response = requests.request(method, f"{server.url}{path}", **kwargs)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error_code"] == code
    assert isinstance(payload["message"], str) and payload["message"]


def test_the_openapi_document_describes_the_api(server: RunningServer) -> None:
    document = requests.get(f"{server.url}/openapi.json").json()
    for path in ("/api/health", "/api/clients/register", "/api/clients/me", "/api/registrations/{registration_id}"):
        assert path in document["paths"], path
    assert requests.get(f"{server.url}/docs").status_code == 200


def test_health_says_how_clients_register_and_which_server_to_sign_for(server: RunningServer) -> None:
    health = requests.get(f"{server.url}/api/health").json()
    server_id = health.pop("server_id")
    assert health == {
        "status": "ok",
        "version": importlib.metadata.version("kachery-cloud"),
        "registration_mode": "local",
        "signature_window_sec": 60,
        "signature_scheme": "kachery-cloud-request-v2",
    }
    assert re.fullmatch("[0-9a-f]{32}", server_id)
    # The id is the server's (its database's): the same after a restart, which the embedded server test shows.
    assert requests.get(f"{server.url}/api/health").json()["server_id"] == server_id


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_create_exactly_the_models_and_are_idempotent(
    backend: str, tmp_path: object, postgres: PostgresDatabases
) -> None:
    url = postgres.create() if backend == "postgresql" else f"sqlite:///{tmp_path}/m.db"
    db = Database(url)
    try:
        db.upgrade()
        db.upgrade()
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        db.dispose()


def test_requests_for_another_host_name_are_refused(server: RunningServer) -> None:
    # DNS rebinding: a web page's own domain pointed at 127.0.0.1 arrives with that domain as Host.
    response = requests.get(f"{server.url}/api/clients/me", headers={"Host": "attacker.example"})
    assert response.status_code == 400
    assert response.json()["error_code"] == "invalid_host"
    assert requests.get(f"{server.url}/", headers={"Host": "attacker.example"}).status_code == 400
    assert requests.get(f"{server.url}/api/clients/me", headers={"Host": f"localhost:{server.port}"}).status_code == 401


@pytest.mark.parametrize("path", ["/api/health", "/api/health/ready"])
def test_a_balancer_checks_health_without_a_host_header(server: RunningServer, path: str) -> None:
    # HTTP/1.0 without Host, as haproxy's plain httpchk sends it, and with a balancer's own name.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert requests.get(f"{server.url}{path}", headers={"Host": "10.0.0.9:8080"}).status_code == 200


def test_oversized_bodies_are_refused_before_reading(server: RunningServer) -> None:
    from api_server.app import MAX_BODY_BYTES

    response = requests.post(f"{server.url}/api/clients/register", data=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert response.json()["error_code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"y" * 65536

    response = requests.post(f"{server.url}/api/registrations/x/google", data=chunks())
    assert response.status_code == 413
    assert response.json()["error_code"] == "request_too_large"


def test_pages_may_not_be_framed(server: RunningServer) -> None:
    response = requests.get(f"{server.url}/")
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
