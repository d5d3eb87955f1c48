"""A stand-in for Google's sign-in: a locally generated RSA key plays Google's, its certificate served from a
local certs endpoint (the server's ``google_certs_url``), and ID tokens signed with it."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

GOOGLE_CLIENT_ID = "1234-test.apps.googleusercontent.com"
KEY_ID = "test-key-1"


class FakeGoogleKeys:
    """An RSA key pair and its self-signed certificate, published like Google's v1 certs endpoint."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-google")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.certs = {KEY_ID: cert.public_bytes(serialization.Encoding.PEM).decode()}
        self.private_pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def id_token(self, **claims: object) -> str:
        from google.auth import crypt, jwt

        now = int(time.time())
        payload = {
            "iss": "https://accounts.google.com",
            "aud": GOOGLE_CLIENT_ID,
            "sub": "1098765",
            "email": "alice@example.org",
            "email_verified": True,
            "name": "Alice",
            "iat": now,
            "exp": now + 600,
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        signer = crypt.RSASigner.from_string(self.private_pem, key_id=KEY_ID)
        return jwt.encode(signer, payload).decode()


@pytest.fixture(scope="module")
def google_keys() -> Iterator[tuple[FakeGoogleKeys, str]]:
    keys = FakeGoogleKeys()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(keys.certs).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield keys, f"http://127.0.0.1:{httpd.server_address[1]}/oauth2/v1/certs"
    httpd.shutdown()
