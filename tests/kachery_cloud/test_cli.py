"""The installed commands, run as a user would run them."""

import grp
import json
import os
import subprocess
from pathlib import Path

import pytest

from ..helpers import BIN
from ..helpers import run_cli as run

MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def test_store_local_load_cat_and_load_info(tmp_path: Path, kachery_dir: Path) -> None:
    source = tmp_path / "test_content.txt"
    source.write_text("test-content\n")
    stored = run("kachery-cloud-store-local", str(source))
    assert stored.returncode == 0, stored.stderr
    uri = stored.stdout.strip()
    assert uri == "sha1://b971c6ef19b1d70ae8f0feb989b106c319b36230?label=test_content.txt"
    loaded = run("kachery-cloud-load", uri)
    assert loaded.stdout.strip() == str(kachery_dir / "sha1/b9/71/c6/b971c6ef19b1d70ae8f0feb989b106c319b36230")
    assert run("kachery-cloud-cat", uri).stdout == "test-content\n"
    info = json.loads(run("kachery-cloud-load-info", uri).stdout)
    assert info["size"] == 13 and info["linked"] is False
    dest = tmp_path / "copy.txt"
    assert run("kachery-cloud-load", uri, "--dest", str(dest)).stdout.strip() == str(dest)
    assert dest.read_text() == "test-content\n"


def test_the_group_command_carries_the_same_subcommands(tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("group")
    uri = run("kachery-cloud", "store-local", str(source), "--label", "custom").stdout.strip()
    assert uri.endswith("?label=custom")
    assert run("kachery-cloud", "cat", uri).stdout == "group"
    assert run("kachery-cloud", "load", uri, "--local-only").returncode == 0
    linked = run("kachery-cloud", "link", str(source)).stdout.strip()
    assert linked.split("?")[0] == uri.split("?")[0]
    assert run("kachery-cloud", "load-info", linked).returncode == 0
    help_text = run("kachery-cloud", "--help").stdout
    for command in ("store-local", "load", "cat", "link", "load-info"):
        assert command in help_text
    assert run("kachery-cloud", "--version").stdout.startswith("kachery-cloud, version")


def test_link_command_prints_a_uri_that_loads_the_original(tmp_path: Path) -> None:
    source = tmp_path / "big.dat"
    source.write_bytes(b"linked")
    uri = run("kachery-cloud-link", str(source)).stdout.strip()
    assert uri.endswith("?label=big.dat")
    assert run("kachery-cloud-load", uri).stdout.strip() == str(source)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("kachery-cloud-load", "sha1://" + "1" * 40), "is not in the local store"),
        (("kachery-cloud-load", "sha1://" + "1" * 40, "--local-only"), "is not in the local store"),
        (("kachery-cloud-cat", "sha1://" + "1" * 40), "is not in the local store"),
        (("kachery-cloud-load-info", "sha1://" + "1" * 40), "is not in the local store"),
        (("kachery-cloud-load", "ipfs://abc"), "unsupported URI scheme"),
        (("kachery-cloud-cat", "sha1://xyz"), "not a SHA-1"),
        (("kachery-cloud-store-local", "/no/such/file"), "no such file"),
        (("kachery-cloud-store-local", "/"), "is a directory"),
        (("kachery-cloud-link", "/no/such/file"), "no such file"),
        (("kachery-cloud", "multiuser", "init", "/proc/self/lab", "--group", MY_GROUP), "cannot make the lab"),
        (("kachery-cloud", "multiuser", "init", "/tmp/lab", "--group", "no-such-group-kc"), "no-such-group-kc"),
    ],
)
def test_errors_are_one_line_messages_with_a_nonzero_exit(
    args: tuple[str, ...], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KACHERY_CLOUD_RETRY_SEC", "1")  # no server listens: do not wait 20 s for one
    result = run(*args)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stderr.startswith("Error: ")
    assert "Traceback" not in result.stderr


def test_cat_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    source = tmp_path / "big.txt"
    source.write_bytes(b"line\n" * 2_000_000)
    uri = run("kachery-cloud-store-local", str(source)).stdout.strip()
    pipeline = subprocess.run(
        f"{BIN / 'kachery-cloud-cat'} '{uri}' | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert pipeline.stdout == "line\n"
    assert "Traceback" not in pipeline.stderr and "Error" not in pipeline.stderr
