"""Two real Unix users, each with umask 077, sharing one client directory in multiuser mode."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kachery_cloud.protocol.hashing import sha1_of_file

from .multiuser_runtime import LabUser, build_runtime, ensure_lab_users, is_root, run_as

pytestmark = pytest.mark.skipif(not is_root(), reason="creating Unix users needs root (CI runs as root)")

STORE = r"""
import json, os, sys
import numpy as np
import kachery_cloud as kcl
name, home = sys.argv[1], sys.argv[2]
src = os.path.join(home, "data.bin")
with open(src, "wb") as f:
    f.write((name * 1000).encode() * 2000)  # ~10-20 MB: above the hash memo's threshold
out = {
    "file": kcl.store_file_local(src, label="data.bin"),
    "text": kcl.store_text_local(f"hello from {name}"),
    "npy": kcl.store_npy_local(np.arange(10) * len(name)),
    "shared_text": kcl.store_text_local("the same content from everyone"),
}
kcl.set_mutable_local(f"@lab/@shared/from_{name}", out["text"])
kcl.set_mutable_local("@lab/@shared/last_writer", name)
print(json.dumps(out))
"""

LOAD = r"""
import json, sys
import kachery_cloud as kcl
uris = json.loads(sys.argv[1])
out = {
    "text": kcl.load_text(uris["text"]),
    "file_size": len(kcl.load_bytes(uris["file"])),
    "npy": kcl.load_npy(uris["npy"]).tolist(),
    "shared_text": kcl.load_text(uris["shared_text"]),
    "mutables": {k: kcl.get_mutable_local(f"@lab/@shared/{k}")
                 for k in ("from_kctestalice", "from_kctestbob", "last_writer")},
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[list[LabUser], str, dict[str, str], Path]]:
    users = ensure_lab_users()
    base = Path(tempfile.mkdtemp(prefix="kc-multiuser-"))
    base.chmod(0o755)
    try:
        interpreter, env = build_runtime(base / "runtime", users[0])
        yield users, interpreter, env, base
    finally:
        shutil.rmtree(base)


def make_shared_dir(base: Path, lab_gid: int) -> Path:
    """What a lab admin does once: a setgid group directory with multiuser: true."""
    shared = base / "lab-kachery"
    shared.mkdir()
    os.chown(shared, 0, lab_gid)
    shared.chmod(0o2770)
    config = shared / "config.yaml"
    config.write_text("multiuser: true\n")
    os.chown(config, 0, lab_gid)
    config.chmod(0o640)
    return shared


def private_home(base: Path, user: LabUser) -> Path:
    home = base / f"home-{user.name}"
    home.mkdir()
    os.chown(home, user.uid, user.gid)
    home.chmod(0o700)
    return home


def test_two_users_with_umask_077_share_one_directory(lab: tuple[list[LabUser], str, dict[str, str], Path]) -> None:
    (alice, bob), interpreter, env, base = lab
    shared = make_shared_dir(base, alice.lab_gid)
    env = {**env, "KACHERY_CLOUD_DIR": str(shared), "KACHERY_CLOUD_QUIET": "1"}

    def run(user: LabUser, code: str, *args: str) -> dict[str, object]:
        result = run_as(user, interpreter, code, env, *args)
        assert result.returncode == 0, f"{user.name}: {result.stderr}"
        return json.loads(result.stdout)

    alice_uris = run(alice, STORE, alice.name, str(private_home(base, alice)))
    seen_by_bob = run(bob, LOAD, json.dumps(alice_uris))
    assert seen_by_bob["text"] == "hello from kctestalice"
    assert seen_by_bob["npy"] == [i * len("kctestalice") for i in range(10)]
    assert seen_by_bob["mutables"] == {"from_kctestalice": alice_uris["text"], "from_kctestbob": None,
                                       "last_writer": "kctestalice"}  # fmt: skip

    bob_uris = run(bob, STORE, bob.name, str(private_home(base, bob)))  # overwrites alice's last_writer
    assert bob_uris["shared_text"] == alice_uris["shared_text"]
    seen_by_alice = run(alice, LOAD, json.dumps(bob_uris))
    assert seen_by_alice["text"] == "hello from kctestbob"
    assert seen_by_alice["file_size"] == len(bob.name) * 1000 * 2000
    assert seen_by_alice["mutables"]["last_writer"] == "kctestbob"

    # A blob evicted from the cache is stored again by the other user, into the directories the first made.
    alice_blob = next(p for p in (shared / "sha1").rglob("*") if p.name == alice_uris["file"][7:47])
    alice_blob.unlink()
    bobs_copy = own_copy_of_alices_data(base, bob)
    run(bob, "import sys, kachery_cloud as kcl; kcl.store_file_local(sys.argv[1]); print('{}')", bobs_copy)
    assert sha1_of_file(alice_blob) == alice_blob.name

    # Alice deletes a folder holding bob's values.
    run(alice, "import kachery_cloud as kcl; kcl.delete_mutable_folder_local('@lab/@shared'); print('{}')")
    assert run(bob, LOAD, json.dumps(bob_uris))["mutables"]["from_kctestbob"] is None

    assert_shared_permissions(shared, alice.lab_gid)


def test_a_directory_others_may_write_to_is_shared_even_without_multiuser_in_its_config(
    lab: tuple[list[LabUser], str, dict[str, str], Path],
) -> None:
    """kachery-cloud's issue #9: a group directory without ``multiuser: true`` left files colleagues could not
    read. A directory that others may write to is shared whatever its config says."""
    (alice, bob), interpreter, env, base = lab
    shared = base / "not-multiuser"
    shared.mkdir()
    os.chown(shared, 0, alice.lab_gid)
    shared.chmod(0o2770)
    env = {**env, "KACHERY_CLOUD_DIR": str(shared), "KACHERY_CLOUD_QUIET": "1"}
    stored = run_as(alice, interpreter, "import kachery_cloud as kcl; print(kcl.store_text_local('shared'))", env)
    assert stored.returncode == 0, stored.stderr
    code = "import sys, kachery_cloud as kcl; print(kcl.load_text(sys.argv[1]))"
    loaded = run_as(bob, interpreter, code, env, stored.stdout.strip())
    assert (loaded.returncode, loaded.stdout.strip()) == (0, "shared"), loaded.stderr


def test_a_colleague_without_access_gets_an_explanation(
    lab: tuple[list[LabUser], str, dict[str, str], Path],
) -> None:
    """Alice's own directory, which her group may read but not write: bob cannot use her private files, and is
    told how a directory is shared."""
    (alice, bob), interpreter, env, base = lab
    private = base / "alices-own"
    private.mkdir()
    os.chown(private, alice.uid, alice.lab_gid)
    private.chmod(0o750)
    env = {**env, "KACHERY_CLOUD_DIR": str(private), "KACHERY_CLOUD_QUIET": "1"}
    stored = run_as(alice, interpreter, "import kachery_cloud as kcl; print(kcl.store_text_local('private'))", env)
    assert stored.returncode == 0, stored.stderr
    code = "import sys, kachery_cloud as kcl; kcl.load_text(sys.argv[1])"
    loaded = run_as(bob, interpreter, code, env, stored.stdout.strip())
    assert loaded.returncode == 1
    assert "kachery_cloud.errors.LocalFileError:" in loaded.stderr
    assert "belongs to kctestalice, who did not open it to the group" in loaded.stderr


def own_copy_of_alices_data(base: Path, user: LabUser) -> str:
    """A copy of alice's data file in ``user``'s private home."""
    content = ("kctestalice" * 1000).encode() * 2000
    path = base / f"home-{user.name}" / "alice-data.bin"
    path.write_bytes(content)
    os.chown(path, user.uid, user.gid)
    return str(path)


def assert_shared_permissions(shared: Path, lab_gid: int) -> None:
    checked_blobs = 0
    for path in shared.rglob("*"):
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if path.name == "config.yaml":
            continue
        assert st.st_gid == lab_gid, f"{path} has group {st.st_gid}, not the lab's"
        assert mode & 0o007 == 0, f"{path}: umask 077 gives others nothing, got {oct(mode)}"
        if path.is_dir():
            assert mode & 0o070 == 0o070 and st.st_mode & stat.S_ISGID, f"{path}: {oct(st.st_mode)}"
        elif path.parent.parent.parent.parent.name == "sha1" and len(path.name) == 40:
            assert mode == 0o440, f"blob {path}: {oct(mode)}"
            checked_blobs += 1
        else:
            assert mode & 0o060 == 0o060, f"{path}: {oct(mode)}"
    assert checked_blobs >= 6
