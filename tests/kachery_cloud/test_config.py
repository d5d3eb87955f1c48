from pathlib import Path

import pytest

import kachery_cloud as kcl
from kachery_cloud import ConfigError
from kachery_cloud.config import load_config


def write_config(directory: Path, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(text)


def test_defaults_without_a_config_file(kachery_dir: Path) -> None:
    config = load_config()
    assert config.dir == kachery_dir
    assert (config.api_url, config.project, config.multiuser, config.ephemeral) == (None, None, False, False)


def test_default_directory_is_in_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KACHERY_CLOUD_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kcl.get_kachery_cloud_dir() == str(tmp_path / ".kachery-cloud")


def test_relative_directory_is_made_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KACHERY_CLOUD_DIR", "rel/kc")
    assert load_config().dir == tmp_path / "rel" / "kc"


def test_file_values_and_environment_overrides(kachery_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(kachery_dir, "api_url: http://127.0.0.1:7733\nproject: lab\nmultiuser: true\nfuture_key: 3\n")
    config = load_config()
    assert (config.api_url, config.project, config.multiuser) == ("http://127.0.0.1:7733", "lab", True)
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", "other")
    monkeypatch.setenv("KACHERY_CLOUD_API_URL", "http://example.invalid")
    monkeypatch.setenv("KACHERY_CLOUD_MULTIUSER", "FALSE")
    config = load_config()
    assert (config.api_url, config.project, config.multiuser) == ("http://example.invalid", "other", False)


def test_changes_to_the_file_are_seen_without_restarting(kachery_dir: Path) -> None:
    write_config(kachery_dir, "project: one\n")
    assert load_config().project == "one"
    write_config(kachery_dir, "project: two-two\n")
    assert load_config().project == "two-two"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("multiuser: [unclosed", "not valid YAML"),
        ("- a list\n", "must contain a mapping"),
        ("multiuser: 'yes please'\n", "'multiuser' must be a bool"),
        ("api_url: 42\n", "'api_url' must be a str"),
    ],
)
def test_invalid_config_files_are_reported_with_their_path(kachery_dir: Path, text: str, message: str) -> None:
    write_config(kachery_dir, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config()
    assert str(kachery_dir / "config.yaml") in str(info.value)


def test_invalid_boolean_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "maybe")
    with pytest.raises(ConfigError, match="KACHERY_CLOUD_EPHEMERAL='maybe' is not a boolean"):
        load_config()
