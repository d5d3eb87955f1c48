"""Baseline: ``dvc push`` / ``dvc pull`` of many small files to an S3-compatible bucket (dvc-s3 remote).

What it measures, for one directory of N files:

- ``dvc add`` of the directory (preparation: hashes the files and copies them into ``.dvc/cache``;
  reported, not part of the comparison);
- ``dvc push`` to an empty prefix of the bucket (wall clock around the subprocess, so DVC's start-up
  time is included; it is the same cost a user pays);
- ``dvc pull`` into an empty state: no workspace copy, no ``.dvc/cache``, no DVC site cache, as right
  after a fresh clone. Afterwards every file is checked (names, sizes, SHA-1) against the source.

It is the baseline for our own ``store_files`` / ``load_files``. DVC runs from its own venv
(``<repo>/.venv-dvc``, made on first use by :func:`ensure_dvc`), never from the project's ``.venv``:
dvc-s3 pulls in aiobotocore, which pins botocore to a narrow range and would replace the project's
boto3/botocore. Installed without pins (PyPI, this run): dvc 3.67.1, dvc-s3 3.3.0, s3fs 2026.9.0,
aiobotocore 3.10.0, botocore 1.43.117 (about 30 s to install).

DVC's default transfer concurrency (``--jobs``) is ``4 * os.cpu_count()`` (dvc-objects'
``FileSystem._JOBS``): 8 on a 2-core machine. :class:`DvcBaseline` leaves it at that unless ``jobs`` is
given.

Standalone: starts a throw-away nanio server on 127.0.0.1, creates a bucket, writes N files of 4 KiB
random bytes, runs add/push/pull and prints the seconds::

    .venv/bin/python bench/dvc_baseline.py [N_FILES] [JOBS]   # default 5000 files, DVC's default jobs
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DVC_VENV = REPO_ROOT / ".venv-dvc"

# Packages whose versions are worth recording next to a result (see installed_versions).
_VERSIONED_PACKAGES = ("dvc", "dvc-s3", "dvc-data", "dvc-objects", "s3fs", "aiobotocore", "botocore")


class DvcError(RuntimeError):
    """A dvc (or pip) command exited non-zero; the message carries its stderr."""


def ensure_dvc(root: Path = DEFAULT_DVC_VENV) -> Path:
    """Return the ``dvc`` executable of the venv at ``root``, creating the venv and installing
    ``dvc dvc-s3`` into it first if ``root/bin/dvc`` does not exist yet."""
    dvc = root / "bin" / "dvc"
    if dvc.exists():
        return dvc
    print(f"installing dvc + dvc-s3 into {root} (takes about half a minute)...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    python3 = shutil.which("python3") or sys.executable
    # No --clear: a venv left by an interrupted install is reused and pip completes it.
    _run_checked([python3, "-m", "venv", str(root)])
    _run_checked([str(root / "bin" / "python"), "-m", "pip", "install", "-q", "dvc", "dvc-s3"])
    if not dvc.exists():
        raise DvcError(f"pip install dvc dvc-s3 into {root} did not produce {dvc}")
    print(f"installed {dvc_version(dvc)} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return dvc


def dvc_version(dvc: Path) -> str:
    """``dvc --version`` of that executable, e.g. ``"3.67.1"``."""
    return _run_checked([str(dvc), "--version"], env=_isolated_env(None)).stdout.strip()


def installed_versions(dvc: Path) -> dict[str, str]:
    """Versions of dvc and of the S3 stack under it, read from the venv that holds ``dvc``."""
    code = "import importlib.metadata as m, json, sys\nprint(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    out = _run_checked([str(dvc.parent / "python"), "-c", code, *_VERSIONED_PACKAGES]).stdout
    return json.loads(out)


class DvcBaseline:
    """One DVC repository in ``work_dir/repo`` whose default remote is ``s3://bucket/prefix``.

    Use a new ``prefix`` for every instance (e.g. ``dvc-bench/<run id>``): push only uploads what the
    remote lacks, so a second push to the same prefix measures nothing but the existence checks.

    ``jobs`` is passed as ``--jobs`` to push and pull; None keeps DVC's default (4 * cpu_count).
    """

    def __init__(
        self,
        dvc: Path,
        work_dir: Path,
        endpoint_url: str,
        bucket: str,
        access_key: str,
        secret_key: str,
        prefix: str,
        jobs: int | None = None,
    ) -> None:
        self.dvc = dvc
        self.work_dir = work_dir
        self.repo = work_dir / "repo"
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.prefix = prefix.strip("/")
        self.jobs = jobs
        self.env = _isolated_env(work_dir)
        self.data_dir: Path | None = None
        self.add_seconds: float | None = None
        # relative path -> (size, sha1) of the prepared files, to check what pull brings back
        self._manifest: dict[str, tuple[int, str]] = {}

    # -- steps -------------------------------------------------------------------------------------

    def prepare(self, files_dir: Path) -> float:
        """Init the repo, configure the remote, copy ``files_dir`` in and ``dvc add`` it.

        Returns the seconds of ``dvc add`` alone (also kept as ``add_seconds``). The copy exists so
        that :meth:`pull_fresh` can delete the workspace data without touching the caller's files.
        """
        if self.repo.exists():
            raise FileExistsError(f"{self.repo} already exists: use a new work_dir")
        self.repo.mkdir(parents=True)
        self._dvc("init", "--no-scm", "-q")
        # The environment variable already stops analytics; the config makes the repo say so too,
        # and check_update=false keeps the updater from looking for a new release.
        self._dvc("config", "core.analytics", "false")
        self._dvc("config", "core.check_update", "false")
        remote = "bench"
        self._dvc("remote", "add", "-d", remote, f"s3://{self.bucket}/{self.prefix}")
        # An http:// endpoint makes botocore use plain HTTP, and for a custom endpoint it addresses
        # the bucket path-style by itself (127.0.0.1 and localhost alike, botocore 1.43.117), so no
        # addressing option is needed - dvc-s3 has none anyway.
        self._dvc("remote", "modify", remote, "endpointurl", self.endpoint_url)
        self._dvc("remote", "modify", remote, "region", "us-east-1")
        # Keys go to .dvc/config.local, as DVC recommends for secrets.
        self._dvc("remote", "modify", "--local", remote, "access_key_id", self.access_key)
        self._dvc("remote", "modify", "--local", remote, "secret_access_key", self.secret_key)

        self.data_dir = self.repo / files_dir.name
        shutil.copytree(files_dir, self.data_dir)
        self._manifest = _manifest(self.data_dir)
        if not self._manifest:
            raise ValueError(f"{files_dir} holds no files")
        self.add_seconds = self._timed("add", "-q", files_dir.name)
        return self.add_seconds

    def push(self) -> float:
        """Seconds of ``dvc push`` (all objects of the added directory to the remote)."""
        self._require_prepared()
        return self._timed("push", *self._jobs_args())

    def pull_fresh(self) -> float:
        """Seconds of ``dvc pull`` into an empty state, then check that every file came back."""
        data_dir = self._require_prepared()
        # Fresh-clone state: no workspace copy, no object cache, and no site cache (DVC keeps its
        # hash memo and data index there, which could let it skip work a fresh clone must do).
        shutil.rmtree(data_dir)
        shutil.rmtree(self.repo / ".dvc" / "cache", ignore_errors=True)
        shutil.rmtree(self.env["DVC_SITE_CACHE_DIR"], ignore_errors=True)
        seconds = self._timed("pull", *self._jobs_args())
        self._verify(data_dir)
        return seconds

    # -- helpers -----------------------------------------------------------------------------------

    def _jobs_args(self) -> list[str]:
        return [] if self.jobs is None else ["--jobs", str(self.jobs)]

    def _require_prepared(self) -> Path:
        if self.data_dir is None:
            raise RuntimeError("call prepare() first")
        return self.data_dir

    def _dvc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run_checked([str(self.dvc), *args], cwd=self.repo, env=self.env)

    def _timed(self, *args: str) -> float:
        start = time.perf_counter()
        self._dvc(*args)
        return time.perf_counter() - start

    def _verify(self, data_dir: Path) -> None:
        if not data_dir.is_dir():
            raise DvcError(f"dvc pull did not restore {data_dir}")
        got = _manifest(data_dir)
        if got == self._manifest:
            return
        missing = self._manifest.keys() - got.keys()
        extra = got.keys() - self._manifest.keys()
        wrong = [p for p in self._manifest.keys() & got.keys() if got[p] != self._manifest[p]]
        raise DvcError(
            f"dvc pull restored {len(got)} of {len(self._manifest)} files "
            f"({len(missing)} missing, {len(extra)} unexpected, {len(wrong)} with other content), "
            f"e.g. {sorted(missing)[:3]} {sorted(extra)[:3]} {sorted(wrong)[:3]}"
        )


def _manifest(root: Path) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            out[path.relative_to(root).as_posix()] = (len(data), hashlib.sha1(data).hexdigest())
    return out


def _isolated_env(work_dir: Path | None) -> dict[str, str]:
    """Environment for dvc: no analytics, and no user/system DVC or AWS configuration leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        # AWS_* could override the remote's keys or endpoint; PYTHON* could point the dvc venv at the
        # project's code; DVC_* from the caller could redirect config or cache dirs.
        if not k.startswith(("AWS_", "PYTHON", "DVC_", "VIRTUAL_ENV"))
    }
    env["DVC_NO_ANALYTICS"] = "1"
    if work_dir is not None:
        # DVC 3 reads these (checked in 3.67.1's dvc/env.py); older versions would just ignore them.
        # The default site cache is the shared /var/tmp/dvc, where other runs' hash memos live.
        env["DVC_SITE_CACHE_DIR"] = str(work_dir / "dvc-site-cache")
        env["DVC_GLOBAL_CONFIG_DIR"] = str(work_dir / "dvc-global-config")
        env["DVC_SYSTEM_CONFIG_DIR"] = str(work_dir / "dvc-system-config")
        # Non-existent files: botocore must not read ~/.aws (a profile there could set other keys).
        env["AWS_CONFIG_FILE"] = str(work_dir / "no-aws-config")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(work_dir / "no-aws-credentials")
    return env


def _run_checked(
    cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise DvcError(
            f"{' '.join(cmd[:3])} ... exited {proc.returncode}\n"
            f"stderr:\n{proc.stderr.strip()}\nstdout:\n{proc.stdout.strip()}"
        )
    return proc


# -- standalone run ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_nanio(data_dir: Path, access_key: str, secret_key: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    nanio = Path(sys.executable).parent / "nanio"
    env = dict(os.environ, NANIO_ACCESS_KEY=access_key, NANIO_SECRET_KEY=secret_key)
    cmd = [str(nanio), "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)]
    with open(data_dir.parent / "nanio.log", "wb") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [*cmd, "--no-access-log"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stopping it takes any workers along
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nanio exited {proc.returncode}: {(data_dir.parent / 'nanio.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    _stop(proc)
    raise RuntimeError("nanio did not start listening within 30 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    import boto3
    from botocore.config import Config

    n_files = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    jobs = int(sys.argv[2]) if len(sys.argv) > 2 else None
    file_size = 4096
    dvc = ensure_dvc()
    versions = installed_versions(dvc)
    print("versions:", " ".join(f"{k}={v}" for k, v in versions.items()))
    access_key, secret_key, bucket = "ak", "sk", "bench"
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "nanio").mkdir()
        server, endpoint = _start_nanio(tmp / "nanio", access_key, secret_key)
        try:
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                region_name="us-east-1",
                config=Config(s3={"addressing_style": "path"}),
            )
            s3.create_bucket(Bucket=bucket)
            files = tmp / "files"
            files.mkdir()
            for i in range(n_files):
                (files / f"f{i:06d}.bin").write_bytes(os.urandom(file_size))

            run_id = f"{int(time.time())}-{os.getpid()}"
            baseline = DvcBaseline(
                dvc, tmp / "work", endpoint, bucket, access_key, secret_key, f"dvc-bench/{run_id}", jobs
            )
            add = baseline.prepare(files)
            push = baseline.push()
            pull = baseline.pull_fresh()
            keys = sum(
                page.get("KeyCount", 0)
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"dvc-bench/{run_id}/")
            )
            print(f"jobs: {'DVC default (4 x cpu_count)' if jobs is None else jobs}")
            print(f"{n_files} files x {file_size} B, {keys} objects on the remote (files + .dir manifest)")
            print(f"dvc add   {add:7.2f} s  (preparation)")
            print(f"dvc push  {push:7.2f} s  ({n_files / push:7.0f} files/s)")
            print(f"dvc pull  {pull:7.2f} s  ({n_files / pull:7.0f} files/s, empty cache, verified)")
        finally:
            _stop(server)


if __name__ == "__main__":
    main()
