"""The client's key pair: created once, private, shared in multiuser mode, or taken from the environment."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import kachery_cloud as kcl
from kachery_cloud.config import load_config
from kachery_cloud.identity import load_identity
from kachery_cloud.protocol.keys import client_id_of, generate_private_key, private_key_hex
from kachery_cloud.protocol.request_signing import body_digest, signing_message, verify_signature

from ..helpers import run_python


def test_first_use_creates_a_private_key_readable_only_by_the_user(kachery_dir: Path) -> None:
    client_id = kcl.get_client_id()
    assert len(client_id) == 64 and int(client_id, 16) >= 0
    mode = stat.S_IMODE((kachery_dir / "private.pem").stat().st_mode)
    assert mode == 0o600
    assert (kachery_dir / "public.pem").exists()
    assert kcl.get_client_id() == client_id  # stable


def test_multiuser_mode_makes_the_key_group_readable(kachery_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KACHERY_CLOUD_MULTIUSER", "1")
    kcl.get_client_id()
    mode = stat.S_IMODE((kachery_dir / "private.pem").stat().st_mode)
    assert mode == 0o640


def test_concurrent_first_uses_agree_on_one_identity(kachery_dir: Path) -> None:
    import subprocess
    import sys

    code = "import kachery_cloud as kcl; print(kcl.get_client_id())"
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(8)]
    ids = {p.communicate(timeout=60)[0].strip() for p in processes}
    assert len(ids) == 1
    assert ids == {kcl.get_client_id()}
    assert not [p for p in kachery_dir.iterdir() if p.name.endswith(".part")]


def test_identity_from_the_environment(kachery_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_private_key()
    monkeypatch.setenv("KACHERY_CLOUD_CLIENT_ID", client_id_of(key))
    monkeypatch.setenv("KACHERY_CLOUD_PRIVATE_KEY", private_key_hex(key))
    assert kcl.get_client_id() == client_id_of(key)
    assert not (kachery_dir / "private.pem").exists()


def test_environment_identity_errors_never_echo_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_private_key()
    other = generate_private_key()
    monkeypatch.setenv("KACHERY_CLOUD_CLIENT_ID", client_id_of(other))
    monkeypatch.setenv("KACHERY_CLOUD_PRIVATE_KEY", private_key_hex(key))
    with pytest.raises(kcl.ConfigError, match="does not match") as mismatch:
        kcl.get_client_id()
    assert private_key_hex(key) not in str(mismatch.value)
    monkeypatch.setenv("KACHERY_CLOUD_PRIVATE_KEY", "zz" + private_key_hex(key)[2:])
    with pytest.raises(kcl.ConfigError, match="not an Ed25519 private key") as bad:
        kcl.get_client_id()
    assert private_key_hex(key)[2:] not in str(bad.value)
    monkeypatch.delenv("KACHERY_CLOUD_PRIVATE_KEY")
    with pytest.raises(kcl.ConfigError, match="must be set together"):
        kcl.get_client_id()


def test_a_pem_private_key_in_the_environment_works(kachery_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client_id = kcl.get_client_id()
    pem = (kachery_dir / "private.pem").read_text()
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(kachery_dir.parent / "elsewhere"))
    monkeypatch.setenv("KACHERY_CLOUD_CLIENT_ID", client_id)
    monkeypatch.setenv("KACHERY_CLOUD_PRIVATE_KEY", pem.replace("\n", "\\n"))  # as CI secrets often hold it
    assert kcl.get_client_id() == client_id


def test_a_corrupt_key_file_is_a_clear_error(kachery_dir: Path) -> None:
    kachery_dir.mkdir(parents=True)
    (kachery_dir / "private.pem").write_text("garbage")
    with pytest.raises(kcl.ConfigError, match="not an Ed25519 private key"):
        kcl.get_client_id()


def test_the_private_key_is_not_in_the_identity_repr(kachery_dir: Path) -> None:
    identity = load_identity(load_config())
    assert identity is not None
    assert private_key_hex(identity.private_key) not in repr(identity)
    assert "private_key" not in repr(identity)


def test_signatures_bind_every_part_of_the_request() -> None:
    key = generate_private_key()
    client_id = client_id_of(key)
    parts = dict(
        server_id="5" * 32, method="POST", target="/api/x?a=1", body_sha256=body_digest(b"{}"), timestamp_ms=1,
        nonce="0" * 32, client_id=client_id,
    )  # fmt: skip
    signature = key.sign(signing_message(**parts)).hex()  # type: ignore[arg-type]
    assert verify_signature(client_id, signing_message(**parts), signature)  # type: ignore[arg-type]
    for name, other in [("server_id", "6" * 32), ("method", "GET"), ("target", "/api/x?a=2"),
                        ("body_sha256", body_digest(b"[]")), ("timestamp_ms", 2), ("nonce", "1" * 32)]:  # fmt: skip
        changed = {**parts, name: other}
        assert not verify_signature(client_id, signing_message(**changed), signature), name  # type: ignore[arg-type]
    assert not verify_signature("00" * 32, signing_message(**parts), signature)  # type: ignore[arg-type]
    assert not verify_signature(client_id, signing_message(**parts), "zz")  # type: ignore[arg-type]


def test_the_signing_message_format_is_stable() -> None:
    # Clients and servers of different versions must agree on these bytes.
    message = signing_message(
        server_id="ef" * 16, method="get", target="/api/clients/me", body_sha256=body_digest(b""),
        timestamp_ms=1700000000000, nonce="ab" * 16, client_id="cd" * 32,
    )  # fmt: skip
    assert message == (
        b"kachery-cloud-request-v2\n" + b"ef" * 16 + b"\nGET\n/api/clients/me\n"
        b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n1700000000000\n"
        + b"ab" * 16
        + b"\n"
        + b"cd" * 32
    )


def test_key_creation_is_independent_of_the_umask(kachery_dir: Path) -> None:
    result = run_python("import os; os.umask(0); import kachery_cloud as kcl; kcl.get_client_id()")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((kachery_dir / "private.pem").stat().st_mode) == 0o600
