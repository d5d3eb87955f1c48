"""The embedded server serving other machines: ``start --host 0.0.0.0 --public-url http://<host>:<port>``, and
clients in network namespaces of their own (their own loopback, a veth pair to this host) joining by invitation,
storing 20 MiB and a JSON value on one "machine" and loading both on another. Nothing but the embedded store:
the presigned URLs must name an address those machines reach. Needs root; skipped otherwise."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import CLOUD_TEST_SETTINGS
from ..helpers import BIN
from ..netns import Machine, can_make_machines, machines
from ..servers import RunningServer, clean_env, free_port, start_server

pytestmark = pytest.mark.skipif(can_make_machines() is not None, reason=str(can_make_machines()))

STORE = """
import json, sys
import kachery_cloud as kcl
print(json.dumps({"file": kcl.store_file(sys.argv[1]), "json": kcl.store_json({"sent from": "machine a"})}))
"""
LOAD = """
import json, sys
import kachery_cloud as kcl
from kachery_cloud.errors import PermissionDeniedError
uris = json.loads(sys.argv[1])
out = {"file": kcl.load_file(uris["file"]), "json": kcl.load_json(uris["json"])}
try:
    kcl.store_json({"sent from": "a reader"})
    out["reader_stored"] = True
except PermissionDeniedError:
    out["reader_stored"] = False
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, list[Machine]]]:
    with machines(2) as (a, b):
        port = free_port()
        # Clients reach the server at the host's address on machine a's link (b's packets get there by its
        # default route to the host, as across a LAN).
        settings = {**CLOUD_TEST_SETTINGS, "host": "0.0.0.0", "public_url": f"http://{a.host_address}:{port}"}
        server = start_server(tmp_path_factory.mktemp("lab-server"), settings=settings, port=port)
        try:
            yield server, [a, b]
        finally:
            server.stop()


def on(machine: Machine, client_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command on ``machine`` with its own client directory and no other kachery setting."""
    return subprocess.run(
        machine.command(*argv),
        env=clean_env(KACHERY_CLOUD_DIR=str(client_dir), KACHERY_CLOUD_RETRY_SEC="5"),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_store_is_announced_where_other_machines_reach_it(lab: tuple[RunningServer, list[Machine]]) -> None:
    server, (a, _) = lab
    store_port = server.port + 1  # the default: the API's port + 1
    assert f"clients reach it at http://{a.host_address}:{store_port}" in server.log()
    # The machine really is another one: its own loopback has no server on it.
    probe = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)"
    inside = on(a, Path("/nonexistent"), sys.executable, "-c", probe, str(server.port))
    assert inside.returncode != 0 and "ConnectionRefusedError" in inside.stderr


def test_a_client_on_one_machine_stores_and_one_on_another_loads(
    lab: tuple[RunningServer, list[Machine]], tmp_path: Path
) -> None:
    server, (a, b) = lab
    writer_link = server.admin("invite", "default", "--role", "write").stdout.strip()
    reader_link = server.admin("invite", "default", "--role", "read").stdout.strip()
    assert writer_link.startswith(f"http://{a.host_address}:{server.port}/invite/")

    data = tmp_path / "recording.bin"
    data.write_bytes(hashlib.sha256(b"seed").digest() * (20 * (1 << 20) // 32))  # 20 MiB, multipart here
    joined = on(a, tmp_path / "a", str(BIN / "kachery-cloud-init"), "--invite", writer_link)
    assert joined.returncode == 0 and "Joined project default" in joined.stdout, joined.stderr
    stored = on(a, tmp_path / "a", sys.executable, "-c", STORE, str(data))
    assert stored.returncode == 0, stored.stderr
    uris = json.loads(stored.stdout)

    joined = on(b, tmp_path / "b", str(BIN / "kachery-cloud-init"), "--invite", reader_link)
    assert joined.returncode == 0, joined.stderr
    loaded = on(b, tmp_path / "b", sys.executable, "-c", LOAD, json.dumps(uris))
    assert loaded.returncode == 0, loaded.stderr
    answer = json.loads(loaded.stdout)
    assert Path(answer["file"]).read_bytes() == data.read_bytes()
    assert answer["json"] == {"sent from": "machine a"}
    assert answer["reader_stored"] is False  # a read member cannot write, from anywhere
    # Both came from the server (machine b's directory was empty), and the link's server is now b's.
    assert f"api_url: http://{a.host_address}:{server.port}" in (tmp_path / "b" / "config.yaml").read_text()
    usage = server.settled_usage("default")
    assert sum(d["bytes_out"] for d in usage["days"]) >= data.stat().st_size


def test_the_store_tells_another_machine_nothing_without_a_signature(lab: tuple[RunningServer, list[Machine]]) -> None:
    """The embedded store now listens for the network: an unsigned write with If-None-Match must not say whether
    an object exists (412 for one that does, 403 for one that does not would let anyone test for a file)."""
    server, (a, _) = lab
    s3, bucket = server.s3_client()
    present = f"projects/default/sha1/ab/cd/ef/abcdef{'0' * 34}"
    s3.put_object(Bucket=bucket, Key=present, Body=b"a private object")
    absent = present.replace("abcdef", "fedcba")
    probe = (
        "import sys, requests\n"
        "for key in sys.argv[2:]:\n"
        "    r = requests.put(f'{sys.argv[1]}/kachery-cloud/{key}', data=b'x', headers={'If-None-Match': '*'})\n"
        "    print(r.status_code)\n"
    )
    store_url = f"http://{a.host_address}:{server.port + 1}"
    answers = on(a, Path("/nonexistent"), sys.executable, "-c", probe, store_url, present, absent)
    assert answers.returncode == 0, answers.stderr
    assert answers.stdout.split() == ["403", "403"]
    assert s3.get_object(Bucket=bucket, Key=present)["Body"].read() == b"a private object"
