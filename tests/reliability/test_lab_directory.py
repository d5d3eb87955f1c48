"""A hostile lab member against a colleague, in one shared client directory (the security issue, item 5), with
real Unix users: ``kctestalice`` (the victim) and ``kctestbob`` (the attacker), each with umask 077, members of
``kctestlab``. The directory is made by ``kachery-cloud multiuser init`` run as root (the lab's administrator).

Bob tries what worked before: replacing and removing alice's files, planting symlinks where her process reads
and writes, swapping the configuration and the lab's key, planting hash-memo entries for her files, rewriting
blobs he owns after she trusted them. Each must be refused, and alice must never get wrong bytes or write
outside the directory. Where the directory was made by hand (no sticky bit), what the kernel lets bob do is
still caught by alice's own process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..integration.multiuser_runtime import LabUser, build_runtime, ensure_lab_users, is_root, run_as
from .conftest import Figure, Figures

pytestmark = pytest.mark.skipif(not is_root(), reason="real Unix users need root (CI runs as root)")

MIB = 1 << 20

# Bob's attempts on alice's files: each attempt's outcome, "done" or the error's name.
TRY = r"""
import json, os, sys
os.umask(0o007)  # what bob makes, alice can enter and read: he wants her to use it
attempts = json.loads(sys.argv[1])
out = {}
for name, (op, *args) in attempts.items():
    try:
        if op == "replace":
            with open(args[0], "wb") as f:
                f.write(args[2].encode())
            os.replace(args[0], args[1])
        elif op == "unlink":
            os.unlink(args[0])
        elif op == "rename":
            os.rename(args[0], args[1])
        elif op == "chmod":
            os.chmod(args[0], 0o666)
        elif op == "write":
            with open(args[0], "w") as f:
                f.write(args[1])
        elif op == "symlink":
            os.makedirs(os.path.dirname(args[1]), exist_ok=True)
            os.symlink(args[0], args[1])
        elif op == "rewrite":  # a file bob owns, changed in place
            os.chmod(args[0], 0o644)
            with open(args[0], "r+b") as f:
                f.write(args[1].encode())
            os.chmod(args[0], 0o444)
        elif op == "mkdirs":
            os.makedirs(args[0], exist_ok=True)
        elif op == "plant":  # a new file of bob's at a path of his choice
            os.makedirs(os.path.dirname(args[0]), exist_ok=True)
            with open(args[0], "w") as f:
                f.write(args[1])
        out[name] = "done"
    except OSError as e:
        out[name] = type(e).__name__
print(json.dumps(out))
"""

# Alice's calls: each call's result, or the error it raised.
CALL = r"""
import json, sys
import kachery_cloud as kcl
from kachery_cloud.config import load_config
calls = json.loads(sys.argv[1])
out = {}
for name, code in calls.items():
    try:
        out[name] = {"ok": eval(code)}
    except Exception as e:
        out[name] = {"error": type(e).__name__, "message": str(e)}
print(json.dumps(out, default=str))
"""


class Lab:
    def __init__(self, base: Path, users: list[LabUser], interpreter: str, env: dict[str, str]) -> None:
        self.base, (self.alice, self.bob), self.interpreter, self.env = base, users, interpreter, env

    def make(self, name: str, *, by_hand: bool = False) -> Path:
        """A lab directory: made by `kachery-cloud multiuser init`, or by hand (the old recipe: no sticky bit)."""
        path = self.base / name
        if by_hand:
            path.mkdir()
            os.chown(path, 0, self.alice.lab_gid)
            path.chmod(0o2770)
            (path / "config.yaml").write_text("multiuser: true\n")
            os.chown(path / "config.yaml", 0, self.alice.lab_gid)
            (path / "config.yaml").chmod(0o640)
        else:
            init = [str(Path(sys.executable).parent / "kachery-cloud"), "multiuser", "init", str(path)]
            result = subprocess.run([*init, "--group", "kctestlab"], capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
        return path

    def run(self, user: LabUser, code: str, directory: Path, *args: str) -> dict:
        env = {**self.env, "KACHERY_CLOUD_DIR": str(directory), "KACHERY_CLOUD_QUIET": "1"}
        result = run_as(user, self.interpreter, code, env, *args)
        assert result.returncode == 0, f"{user.name}: {result.stderr}"
        return json.loads(result.stdout.splitlines()[-1])

    def alice_calls(self, directory: Path, **calls: str) -> dict:
        return self.run(self.alice, CALL, directory, json.dumps(calls))

    def bob_tries(self, directory: Path, **attempts: list[str]) -> dict:
        return self.run(self.bob, TRY, directory, json.dumps(attempts))

    def home(self, user: LabUser) -> Path:
        """A private home (0700) with a secret in it."""
        home = self.base / f"home-{user.name}"
        if not home.exists():
            home.mkdir()
            (home / "secret.txt").write_text(f"{user.name}'s secret\n")
            (home / "keep.txt").write_text("do not truncate\n")
            for path in (home, home / "secret.txt", home / "keep.txt"):
                os.chown(path, user.uid, user.gid)
            home.chmod(0o700)
        return home


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    users = ensure_lab_users()
    base = Path(tempfile.mkdtemp(prefix="kc-lab-"))
    base.chmod(0o755)
    try:
        interpreter, env = build_runtime(base / "runtime", users[0])
        yield Lab(base, users, interpreter, env)
    finally:
        shutil.rmtree(base)


def blob_path(directory: Path, sha1: str) -> Path:
    return directory / "sha1" / sha1[:2] / sha1[2:4] / sha1[4:6] / sha1


def sha1_of(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def test_a_member_cannot_replace_or_remove_another_members_files(lab: Lab, figures: Figures) -> None:
    shared = lab.make("lab-no-replace")
    text = "alice's result"
    uri = lab.alice_calls(shared, store=f"kcl.store_text_local({text!r})")["store"]["ok"]
    blob = blob_path(shared, sha1_of(text))
    outcome = lab.bob_tries(
        shared,
        replace_blob=["replace", str(shared / "sha1" / ".bob.part"), str(blob), "bob's text"],
        remove_blob=["unlink", str(blob)],
        chmod_blob=["chmod", str(blob)],
        move_her_directory=["rename", str(blob.parent), str(shared / "sha1" / "moved")],
        move_config=["rename", str(shared / "config.yaml"), str(shared / "config.old")],
        write_config=["write", str(shared / "config.yaml"), "api_url: http://127.0.0.1:9\n"],
        remove_key=["unlink", str(shared / "private.pem")],
        replace_key=["replace", str(shared / ".k.part"), str(shared / "private.pem"), "bob's key"],
    )
    assert set(outcome.values()) == {"PermissionError"}, outcome
    assert lab.alice_calls(shared, load=f"kcl.load_text({uri!r})")["load"] == {"ok": text}

    # The control: in a directory made by hand (no sticky bit at its root), where bob made the directories
    # alice's blob lands in, the kernel lets him replace her blob and the config...
    by_hand = lab.make("lab-by-hand", by_hand=True)
    blob = blob_path(by_hand, sha1_of(text))
    assert lab.bob_tries(by_hand, prepare=["mkdirs", str(blob.parent)]) == {"prepare": "done"}
    uri = lab.alice_calls(by_hand, store=f"kcl.store_text_local({text!r})")["store"]["ok"]
    control = lab.bob_tries(
        by_hand,
        replace_blob=["replace", str(blob.parent / ".bob.part"), str(blob), "bob's text"],
        move_config=["rename", str(by_hand / "config.yaml"), str(by_hand / "config.old")],
        write_config=["plant", str(by_hand / "config.yaml"), "multiuser: true\napi_url: http://127.0.0.1:9\n"],
    )
    assert set(control.values()) == {"done"}, control
    # ... and alice's process still refuses what bob put there: the config is bob's, the blob is not hers and
    # not its hash.
    seen = lab.alice_calls(by_hand, config="load_config().api_url")
    assert seen["config"]["error"] == "ConfigError" and "another member" in seen["config"]["message"], seen
    os.replace(by_hand / "config.old", by_hand / "config.yaml")  # the admin puts the real one back
    seen = lab.alice_calls(by_hand, load=f"kcl.load_text({uri!r})")
    assert seen["load"]["error"] == "IntegrityError" and "kctestbob" in seen["load"]["message"], seen
    figures.record(
        Figure(
            item="5 lab directory: a member replaces or removes another's files",
            runs=len(outcome) + len(control),
            faults=len(outcome),
            details={"refused by the kernel (sticky)": outcome, "by hand, caught by the reader": control},
        )
    )


def test_wrong_bytes_are_never_returned_from_the_cache(lab: Lab, figures: Figures) -> None:
    shared = lab.make("lab-wrong-bytes")
    # A blob bob stored first, which alice has used: bob changes it in place afterwards (he owns it).
    uri = lab.run(lab.bob, CALL, shared, json.dumps({"s": "kcl.store_json_local({'result': 42})"}))["s"]["ok"]
    assert lab.alice_calls(shared, load=f"kcl.load_json({uri!r})")["load"] == {"ok": {"result": 42}}
    sha1 = uri[7:47]
    outcome = lab.bob_tries(shared, rewrite=["rewrite", str(blob_path(shared, sha1)), '{"result":666}'])
    assert outcome == {"rewrite": "done"}
    seen = lab.alice_calls(
        shared,
        json=f"kcl.load_json({uri!r})",
        text=f"kcl.load_text({uri!r})",
        bytes=f"kcl.load_bytes({uri!r}, 0, 5)",
        file=f"kcl.load_file({uri!r})",
    )
    for name, result in seen.items():
        assert result.get("error") == "IntegrityError" and "kctestbob" in result["message"], (name, seen)
    # A file planted at the path of content alice is about to store: she cannot remove it, so her store and her
    # loads of that content are refused, saying whose file it is.
    text = "alice's next result"
    lab.bob_tries(shared, plant=["plant", str(blob_path(shared, sha1_of(text))), "bob's lie"])
    seen = lab.alice_calls(
        shared, store=f"kcl.store_text_local({text!r})", load=f"kcl.load_text('sha1://{sha1_of(text)}')"
    )
    for name, result in seen.items():
        assert result.get("error") == "IntegrityError" and "kctestbob" in result["message"], (name, seen)
    figures.record(
        Figure(item="5 lab directory: wrong bytes in the cache", runs=len(seen) + 5, faults=2, details={"refused": 5})
    )


def test_nothing_inside_the_directory_is_followed_as_a_symlink(lab: Lab, figures: Figures) -> None:
    shared = lab.make("lab-symlinks")
    home = lab.home(lab.alice)
    secret, keep = home / "secret.txt", home / "keep.txt"
    planned_text = "alice's data to store"
    prefix = sha1_of(planned_text)[:2]
    target = sha1_of("anything bob likes")
    lock_for = "e" * 40
    outcome = lab.bob_tries(
        shared,
        blob=["symlink", str(secret), str(blob_path(shared, target))],
        mutables_folder=["symlink", str(home), str(shared / "mutables" / "@alice")],
        blob_directory=["symlink", str(home), str(shared / "sha1" / prefix)],
        lock_file=["symlink", str(keep), str(shared / "tmp" / "locks" / f"{lock_for}.lock")],
    )
    assert set(outcome.values()) == {"done"}, outcome  # planting links is allowed; following them is not
    before = sorted(p.name for p in home.iterdir())
    lock = f"local_directory().blobs.lock({lock_for!r}).__enter__()"
    seen = lab.alice_calls(
        shared,
        read_blob=f"kcl.load_text('sha1://{target}', local_only=True)",
        file_blob=f"kcl.load_file('sha1://{target}', local_only=True)",
        set_mutable="kcl.set_mutable_local('@alice/notes', 'written where?')",
        get_mutable="kcl.get_mutable_local('@alice/notes')",
        store=f"kcl.store_text_local({planned_text!r})",
        lock=f"__import__('kachery_cloud._context', fromlist=['local_directory']).{lock} is None",
    )
    for name in ("read_blob", "file_blob", "set_mutable", "get_mutable", "store"):
        assert seen[name].get("error") == "LocalFileError" and "symbolic link" in seen[name]["message"], (name, seen)
    assert seen["lock"] == {"ok": True}  # taken or not: either way without touching what the link names
    assert sorted(p.name for p in home.iterdir()) == before
    assert secret.read_text() == "kctestalice's secret\n" and keep.read_text() == "do not truncate\n"
    assert "secret" not in json.dumps(seen)
    figures.record(
        Figure(
            item="5 lab directory: symlinks planted by a member",
            runs=len(seen),
            faults=len(outcome),
            details={"planted": sorted(outcome), "refused": sorted(n for n in seen if "error" in seen[n])},
        )
    )


def test_the_configuration_and_the_labs_key_cannot_be_swapped(lab: Lab) -> None:
    by_hand = lab.make("lab-swap", by_hand=True)
    # The lab's key, made by its administrator (root) in a directory made by hand.
    made = subprocess.run(
        [sys.executable, "-c", "import kachery_cloud as kcl; print(kcl.get_client_id())"],
        env={**os.environ, "KACHERY_CLOUD_DIR": str(by_hand)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    lab_client = made.stdout.strip()
    assert lab.alice_calls(by_hand, id="kcl.get_client_id()")["id"] == {"ok": lab_client}
    # Bob moves the key away and puts his own there (possible without the sticky bit).
    bob_key = lab.run(
        lab.bob,
        "import json; from kachery_cloud.protocol.keys import generate_private_key; "
        "from cryptography.hazmat.primitives import serialization as s; k = generate_private_key(); "
        "print(json.dumps(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()).decode()))",
        by_hand,
    )
    outcome = lab.bob_tries(
        by_hand,
        move_key=["rename", str(by_hand / "private.pem"), str(by_hand / "private.old")],
        plant_key=["plant", str(by_hand / "private.pem"), bob_key],
    )
    assert set(outcome.values()) == {"done"}, outcome
    seen = lab.alice_calls(by_hand, id="kcl.get_client_id()")
    assert seen["id"]["error"] == "ConfigError" and "kctestbob" in seen["id"]["message"], seen


def test_memo_entries_are_trusted_only_from_the_same_user(lab: Lab, figures: Figures) -> None:
    """Bob plants a hash-memo entry for alice's file (its stat is all that takes): her store_file must still
    hash it and return its true URI (before, it returned bob's, and her data was never stored)."""
    shared = lab.make("lab-memo")
    data_dir = lab.base / "shared-data"
    data_dir.mkdir(exist_ok=True)
    data_dir.chmod(0o755)  # bob may stat what is in it, whatever this process's umask (a server CLI sets 077)
    data = data_dir / "alice.bin"
    data.write_bytes(os.urandom(2 * MIB))  # over the memo's threshold
    os.chown(data, lab.alice.uid, lab.alice.lab_gid)
    data.chmod(0o640)
    true_sha1 = hashlib.sha1(data.read_bytes()).hexdigest()
    planted = lab.run(
        lab.bob,
        r"""
import hashlib, json, os, sys
os.umask(0o007)
from dataclasses import asdict
from kachery_cloud.local.hash_memo import FileFingerprint
path, root, victim = sys.argv[1], sys.argv[2], sys.argv[3]
fp = FileFingerprint.of(os.stat(path))
made = []
for extra in ("", f":uid{victim}"):  # the old key, and the key with the victim's uid
    key = hashlib.sha1(f"{fp.dev}:{fp.ino}:{fp.size}:{fp.mtime_ns}{extra}".encode()).hexdigest()
    entry = os.path.join(root, "hash_memo", key[:2], key)
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    with open(entry, "w") as f:
        json.dump({"sha1": "b" * 40, "fingerprint": asdict(fp), "path": path}, f)
    os.chmod(entry, 0o644)
    made.append(entry)
print(json.dumps(made))
""",
        shared,
        str(data),
        str(shared),
        str(lab.alice.uid),
    )
    assert len(planted) == 2
    seen = lab.alice_calls(shared, store=f"kcl.store_file_local({str(data)!r})")
    assert seen["store"].get("ok", "").startswith(f"sha1://{true_sha1}"), seen
    assert hashlib.sha1(blob_path(shared, true_sha1).read_bytes()).hexdigest() == true_sha1
    figures.record(Figure(item="5 lab directory: planted hash-memo entries", runs=1, faults=len(planted)))


def test_a_cache_hit_of_ones_own_blob(lab: Lab, figures: Figures) -> None:
    """Every one of alice's own blobs is found again, in a lab directory (walked without following links, trust
    checked) and in a private one; what a hit costs in each is recorded (doc/reliability.md), not asserted."""
    shared = lab.make("lab-speed")
    private = lab.base / "alice-private"
    private.mkdir()
    os.chown(private, lab.alice.uid, lab.alice.gid)
    code = r"""
import json, time, kachery_cloud as kcl
from kachery_cloud._context import local_directory
uris = [kcl.store_text_local(f"note {i}") for i in range(200)]
blobs = local_directory().blobs
sha1s = [u[7:47] for u in uris]
best = []
for _ in range(5):
    t = time.perf_counter()
    for s in sha1s:
        assert blobs.find(s) is not None
    best.append((time.perf_counter() - t) / len(sha1s))
t = time.perf_counter()
for u in uris:
    assert kcl.load_text(u, local_only=True)
text = (time.perf_counter() - t) / len(uris)
print(json.dumps({"find_us": min(best) * 1e6, "load_text_us": text * 1e6}))
"""
    in_lab = lab.run(lab.alice, code, shared)
    alone = lab.run(lab.alice, code, private)
    figures.record(
        Figure(
            item="5 lab directory: a cache hit of one's own blob",
            runs=400,
            details={"lab directory (µs)": in_lab, "private directory (µs)": alone},
        )
    )
