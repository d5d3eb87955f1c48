"""Server settings: sources, registration mode, secrets kept out of messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from api_server.settings import Settings, load_settings

from ..servers import clean_env


@pytest.mark.parametrize(
    ("values", "mode"),
    [
        ({}, "local"),
        ({"host": "0.0.0.0"}, "none"),
        ({"public_url": "http://localhost:7733"}, "local"),
        # Behind a reverse proxy every request comes from loopback: local registration would be open to all.
        ({"public_url": "https://kachery.mylab.org"}, "none"),
        ({"google_client_id": "x.apps.googleusercontent.com"}, "google"),
        ({"registration": "none"}, "none"),
    ],
)
def test_registration_mode(values: dict, mode: str) -> None:
    assert Settings(**values).registration_mode == mode


def test_environment_overrides_the_file_and_options_override_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "settings.yaml").write_text("port: 1111\nlog_level: warning\ns3:\n  endpoint_url: http://s3\n"
                                            "  bucket: b\n  access_key_id: a\n  secret_access_key: s\n")  # fmt: skip
    monkeypatch.setenv("KACHERY_CLOUD_SERVER_PORT", "2222")
    monkeypatch.setenv("KACHERY_CLOUD_SERVER_S3__BUCKET", "from-env")
    settings = load_settings(data_dir=tmp_path)
    assert settings.port == 2222 and settings.log_level == "warning"
    assert settings.s3 is not None and settings.s3.bucket == "from-env"
    assert load_settings(data_dir=tmp_path, port=3333).port == 3333
    assert settings.s3.secret_access_key.get_secret_value() == "s"
    assert "'s'" not in repr(settings)  # the secret is masked in reprs


def test_invalid_settings_are_reported_without_their_values(tmp_path: Path) -> None:
    (tmp_path / "settings.yaml").write_text(
        "databse_url: postgresql://kachery:SECRET-PASSWORD@db/kachery\n"
        "s3:\n  endpoint_url: http://s3\n  bucket: b\n  secret_access_key: SECRET-S3-KEY\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "api_server.cli", "start", "--data-dir", str(tmp_path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "databse_url" in result.stderr and "s3.access_key_id" in result.stderr
    assert "SECRET" not in result.stderr
