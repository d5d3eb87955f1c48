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
        # Local registration needs the owner's token file, not a loopback address: serving other machines, or
        # behind a reverse proxy (where every request comes from loopback), it stays open to the owner alone.
        ({"host": "0.0.0.0"}, "local"),
        ({"public_url": "https://kachery.mylab.org"}, "local"),
        ({"google_client_id": "x.apps.googleusercontent.com"}, "google"),
        ({"registration": "none"}, "none"),
    ],
)
def test_registration_mode(values: dict, mode: str) -> None:
    assert Settings(**values).registration_mode == mode


@pytest.mark.parametrize(
    ("values", "listen", "clients_reach"),
    [
        ({}, "127.0.0.1", "http://127.0.0.1:9001"),
        ({"host": "0.0.0.0", "public_url": "http://lab.example:7733"}, "0.0.0.0", "http://lab.example:9001"),
        ({"host": "10.1.2.3"}, "10.1.2.3", "http://10.1.2.3:9001"),
        ({"host": "0.0.0.0", "store_public_url": "https://s3.lab.example/"}, "0.0.0.0", "https://s3.lab.example"),
    ],
)
def test_the_embedded_store_listens_where_the_api_does_and_urls_name_the_public_host(
    values: dict, listen: str, clients_reach: str
) -> None:
    settings = Settings(**values)
    assert settings.embedded_store_host == listen
    assert settings.embedded_store_url(9001) == clients_reach


@pytest.mark.parametrize(
    ("text", "size"),
    [("1K", 1024), ("10G", 10 << 30), ("1.5M", 3 << 19), ("64MiB", 64 << 20), ("2 GB", 2 << 30), ("100", 100)],
)
def test_sizes_take_suffixes(text: str, size: int) -> None:
    assert Settings(default_storage_quota_bytes=text).default_storage_quota_bytes == size


@pytest.mark.parametrize("text", ["1KK", "-1", "K", "", "ten", "1e3"])
def test_a_size_that_is_not_one_is_refused(text: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="is not a size"):
        Settings(single_put_max_bytes=text)


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
