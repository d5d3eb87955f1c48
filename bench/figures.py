"""The measurements of the benchmark suite. Each one times kachery-cloud and its baseline in the same run, on
the same bucket, alternating repetitions so that drift of the machine hits both alike."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from .samples import Samples, timed
from .stack import Stack

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
_RSS_PROBE = Path(__file__).with_name("rss_probe.py")


@dataclass(frozen=True)
class Sizes:
    """How big and how often: the full suite, or the smoke run of CI."""

    big_bytes: int
    big_repeats: int
    small_count: int
    small_bytes: int
    small_repeats: int
    json_samples: int
    hit_samples: int
    rss_bytes: int
    curve_bytes: tuple[int, ...]
    curve_repeats: int
    cpu_calls: int = 200  # calls per sample of the API server's CPU per call
    cpu_blocks: int = 5
    parallel_ops: int = 150  # operations of each of the 8 processes of the concurrency figures
    scaling_counts: tuple[int, ...] = (1000, 10_000, 100_000)  # files of the many-files scaling
    replica_ops: int = 150  # operations of each of the 8 processes per replica run
    replica_repeats: int = 2
    huge_bytes: int = 6 * GIB  # one object over S3's 5 GiB single-PUT limit, on SeaweedFS (0: not measured)


FULL = Sizes(GIB, 3, 5000, 4 * KIB, 3, 200, 20000, 2 * GIB, (KIB, 16 * KIB, 256 * KIB, 4 * MIB, 64 * MIB, GIB), 3)
SMOKE = Sizes(8 * MIB, 1, 50, 4 * KIB, 1, 20, 1000, 16 * MIB, (KIB, 64 * KIB, MIB), 1, 20, 2, 10, (100, 300), 10, 1, 0)


# ---------------------------------------------------------------------------------------------- files


def write_random_file(path: Path, size: int) -> None:
    """``size`` bytes that no two calls repeat (so no store deduplicates them)."""
    with open(path, "wb") as f:
        f.write(os.urandom(min(size, 64)))
        remaining = size - min(size, 64)
        block = os.urandom(min(remaining, 16 * MIB)) if remaining else b""
        while remaining > 0:
            n = min(remaining, len(block))
            f.write(block[:n])
            remaining -= n
            block = block[1:] + block[:1]  # cheap variation, so no two blocks are equal


def renew(path: Path) -> None:
    """Give a file new content (its first bytes) without rewriting it all."""
    with open(path, "r+b") as f:
        f.write(os.urandom(min(64, path.stat().st_size)))


def write_small_files(directory: Path, count: int, size: int) -> list[Path]:
    directory.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = directory / f"f{i:05d}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def io_counters() -> tuple[int, int]:
    """Bytes this process passed to read and write system calls so far (files and sockets alike)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


# ---------------------------------------------------------------------------------------------- 1-3: big file


def big_file(stack: Stack, sizes: Sizes, tmp: Path) -> dict[str, Samples]:
    """Store (cold) and load (empty cache) of one big file, next to sha1 + boto3 upload_file, ``s5cmd cp`` (a
    parallel Go client that hashes nothing) and boto3 download_file; then the second store of the unchanged
    file."""
    import kachery_cloud as kcl

    s5cmd = s5cmd_binary()

    mib = sizes.big_bytes / MIB
    out = {
        "store": Samples("kachery-cloud store_file (cold)", "s"),
        "store_base": Samples("hashlib.sha1 + boto3 upload_file", "s"),
        "load": Samples("kachery-cloud load_file (empty cache)", "s"),
        "load_base": Samples("boto3 download_file", "s"),
        "restore": Samples("kachery-cloud store_file again (unchanged file)", "ms"),
    }
    source, target = tmp / "big.bin", tmp / "big.downloaded"
    write_random_file(source, sizes.big_bytes)
    read_during_restore: list[int] = []
    for rep in range(sizes.big_repeats):
        renew(source)
        key = f"bench/big/{rep}-{time.time_ns()}"

        def base_store(key: str = key) -> None:
            sha1_of(source)
            stack.s3.upload_file(str(source), stack.bucket, key)

        out["store_base"].values.append(timed(base_store))
        if s5cmd is not None:
            s5cmd_key = f"{key}-s5cmd"
            out.setdefault("store_s5cmd", Samples("s5cmd cp", "s")).values.append(
                timed(lambda: _s5cmd_put(stack, s5cmd, source, s5cmd_key))
            )
            stack.s3.delete_object(Bucket=stack.bucket, Key=s5cmd_key)
        out["load_base"].values.append(timed(lambda key=key: stack.s3.download_file(stack.bucket, key, str(target))))
        target.unlink()
        stack.s3.delete_object(Bucket=stack.bucket, Key=key)

        writer = stack.fresh_client()
        uris: list[str] = []
        out["store"].values.append(timed(lambda: uris.append(kcl.store_file(str(source)))))
        for _ in range(3):  # the hash memo knows the file now: nothing to read, nothing to send
            before = io_counters()
            out["restore"].values.append(1000 * timed(lambda: kcl.store_file(str(source))))
            after = io_counters()
            read_during_restore.append(after[0] - before[0])
        reader = stack.fresh_client()
        out["load"].values.append(timed(lambda: kcl.load_file(uris[0])))
        for directory in (writer, reader):
            stack.drop_client(directory)
    out["restore"].notes["max_bytes_read_by_syscalls"] = max(read_during_restore)
    for name in [n for n in ("store", "store_base", "store_s5cmd", "load", "load_base") if n in out]:
        out[name].notes["MiB/s"] = round(mib / out[name].median, 1)
    source.unlink()
    return out


# ---------------------------------------------------------------------------------------------- 4-5: many files


def many_files(stack: Stack, sizes: Sizes, tmp: Path, dvc: Path | None) -> dict[str, Samples]:
    """``store_files`` / ``load_files`` of many small files next to a boto3 put_object / get_object loop and
    ``dvc push`` / ``dvc pull`` of the same files to the same bucket."""
    import kachery_cloud as kcl

    what = f"{sizes.small_count} x {sizes.small_bytes // KIB} KiB"
    out = {
        "store": Samples(f"kachery-cloud store_files ({what})", "s"),
        "store_loop": Samples("boto3 put_object loop", "s"),
        "load": Samples(f"kachery-cloud load_files ({what}, empty cache)", "s"),
        "load_loop": Samples("boto3 get_object loop", "s"),
    }
    if dvc is not None:
        out["store_dvc"] = Samples("dvc push", "s")
        out["load_dvc"] = Samples("dvc pull (empty cache)", "s")
    for rep in range(sizes.small_repeats):
        files = write_small_files(tmp / f"small-{rep}", sizes.small_count, sizes.small_bytes)
        prefix = f"bench/small/{rep}-{time.time_ns()}"
        out["store_loop"].values.append(timed(lambda: _put_loop(stack, files, prefix)))
        loop_target = tmp / f"small-{rep}-loop"
        loop_target.mkdir()
        out["load_loop"].values.append(timed(lambda: _get_loop(stack, files, prefix, loop_target)))

        writer = stack.fresh_client()
        uris: list[str] = []
        out["store"].values.append(timed(lambda: uris.extend(kcl.store_files([str(f) for f in files]))))
        reader = stack.fresh_client()
        loaded: list[str | None] = []
        out["load"].values.append(timed(lambda: loaded.extend(kcl.load_files(uris))))
        if None in loaded or len(loaded) != len(files):
            raise AssertionError("load_files did not bring back every file")

        if dvc is not None:
            from .dvc_baseline import DvcBaseline

            key_prefix = f"bench/dvc/{time.time_ns()}"
            endpoint, bucket = stack.endpoint_url, stack.bucket
            baseline = DvcBaseline(dvc, tmp / f"dvc-{rep}", endpoint, bucket, *_credentials(stack), key_prefix)
            baseline.prepare(files[0].parent)
            out["store_dvc"].values.append(baseline.push())
            out["load_dvc"].values.append(baseline.pull_fresh())
        for directory in (writer, reader):
            stack.drop_client(directory)
        subprocess.run(["rm", "-rf", str(files[0].parent), str(loop_target), str(tmp / f"dvc-{rep}")], check=True)
    return out


def _put_loop(stack: Stack, files: list[Path], prefix: str) -> None:
    for path in files:
        stack.s3.put_object(Bucket=stack.bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())


def _get_loop(stack: Stack, files: list[Path], prefix: str, target: Path) -> None:
    for path in files:
        body = stack.s3.get_object(Bucket=stack.bucket, Key=f"{prefix}/{path.name}")["Body"].read()
        (target / path.name).write_bytes(body)


def s5cmd_binary() -> str | None:
    """The s5cmd of this environment (the bench extra installs it on Linux x86_64), else one on PATH."""
    return shutil.which("s5cmd", path=str(Path(sys.executable).parent)) or shutil.which("s5cmd")


def _s5cmd_put(stack: Stack, s5cmd: str, source: Path, key: str) -> None:
    access_key, secret_key = _credentials(stack)
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_REGION": "us-east-1",
    }
    command = [s5cmd, "--endpoint-url", stack.endpoint_url, "cp", str(source), f"s3://{stack.bucket}/{key}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise AssertionError(f"s5cmd cp failed: {done.stderr[-2000:]}")


def _credentials(stack: Stack) -> tuple[str, str]:
    creds = stack.s3._request_signer._credentials  # the server's own keys, as the other baselines use them
    return creds.access_key, creds.secret_key


# ---------------------------------------------------------------------------------------------- 6-7: small objects


def small_objects(stack: Stack, sizes: Sizes) -> dict[str, Samples]:
    """Latency of store_json / load_json (cache miss) of a small object next to one presigned PUT / GET of
    the same bytes with a keep-alive session; then load_json from the cache."""
    import kachery_cloud as kcl

    n = sizes.json_samples
    out = {
        "store_json": Samples("kachery-cloud store_json", "ms"),
        "put": Samples("presigned PUT (requests, keep-alive)", "ms"),
        "load_json": Samples("kachery-cloud load_json (cache miss)", "ms"),
        "get": Samples("presigned GET (requests, keep-alive)", "ms"),
        "hit": Samples("kachery-cloud load_json (cache hit)", "us"),
        "hit_base": Samples("open + read + json.loads of the cached file", "us"),
    }
    objects = [{"bench": "small object", "i": i, "t": time.time_ns(), "values": list(range(20))} for i in range(n)]
    session = requests.Session()
    for i, obj in enumerate(objects):  # presigning is not timed: a client of raw S3 would hold the keys
        data = json.dumps(obj).encode()
        key = f"bench/json/{time.time_ns()}-{i}"
        put_url = stack.s3.generate_presigned_url("put_object", Params={"Bucket": stack.bucket, "Key": key})
        get_url = stack.s3.generate_presigned_url("get_object", Params={"Bucket": stack.bucket, "Key": key})
        out["put"].values.append(1000 * timed(lambda: session.put(put_url, data=data).raise_for_status()))
        out["get"].values.append(1000 * timed(lambda: session.get(get_url).raise_for_status()))
    writer = stack.fresh_client()
    kcl.store_json({"warm": "up"})  # connections and imports, as in a running program
    uris: list[str] = []
    for obj in objects:
        out["store_json"].values.append(1000 * timed(lambda obj=obj: uris.append(kcl.store_json(obj))))
    reader = stack.fresh_client()
    kcl.load_json(kcl.store_json({"warm": "up again"}))
    for uri, obj in zip(uris, objects, strict=True):
        loaded: list[Any] = []
        out["load_json"].values.append(1000 * timed(lambda uri=uri: loaded.append(kcl.load_json(uri))))
        if loaded[0] != obj:
            raise AssertionError("load_json gave something else")
    uri = uris[0]
    path = Path(kcl.load_file(uri) or "")
    for _ in range(sizes.hit_samples):
        out["hit"].values.append(1e6 * timed(lambda: kcl.load_json(uri)))
    for _ in range(sizes.hit_samples):
        out["hit_base"].values.append(1e6 * timed(lambda: json.loads(path.read_bytes())))
    for directory in (writer, reader):
        stack.drop_client(directory)
    return out


# ---------------------------------------------------------------------------------------------- 8: memory


def peak_memory(stack: Stack, sizes: Sizes, tmp: Path) -> dict[str, Samples]:
    """Peak RSS of a client process storing, then of another loading, a big file; boto3 alike for context."""
    source = tmp / "rss.bin"
    write_random_file(source, sizes.rss_bytes)
    out = {
        "store": Samples(f"kachery-cloud store_file of {sizes.rss_bytes // MIB} MiB, peak RSS", "MiB"),
        "load": Samples(f"kachery-cloud load_file of {sizes.rss_bytes // MIB} MiB, peak RSS", "MiB"),
        "store_base": Samples("boto3 upload_file, peak RSS", "MiB"),
        "load_base": Samples("boto3 download_file, peak RSS", "MiB"),
        "idle": Samples("python + import kachery_cloud, peak RSS", "MiB"),
    }
    writer, reader = stack.fresh_client(), stack.fresh_client()
    key = f"bench/rss/{time.time_ns()}"
    s3_args = [stack.endpoint_url, stack.bucket, *_credentials(stack), key]
    store = _probe(stack, writer, "store", str(source))
    out["store"].values.append(store["peak_mib"])
    out["load"].values.append(_probe(stack, reader, "load", store["uri"])["peak_mib"])
    out["store_base"].values.append(_probe(stack, writer, "boto3-upload", str(source), *s3_args)["peak_mib"])
    target = tmp / "rss.downloaded"
    out["load_base"].values.append(_probe(stack, writer, "boto3-download", str(target), *s3_args)["peak_mib"])
    out["idle"].values.append(_probe(stack, writer, "idle")["peak_mib"])
    for path in (source, target):
        path.unlink(missing_ok=True)
    for directory in (writer, reader):
        stack.drop_client(directory)
    return out


def _probe(stack: Stack, client: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(_RSS_PROBE), *args], env=stack.client_env(client), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise AssertionError(f"rss probe {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- curve


def throughput_curve(
    stack: Stack, sizes: Sizes, tmp: Path, reuse: dict[str, Samples] | None, progress: Callable[[str], None]
) -> dict[str, dict[int, Samples]]:
    """MiB/s of store / load for kachery-cloud and boto3 (sha1 + upload_file, download_file) per file size.
    The biggest size reuses the big-file measurements when they were of that size."""
    import kachery_cloud as kcl

    curve: dict[str, dict[int, Samples]] = {"store": {}, "store_base": {}, "load": {}, "load_base": {}}
    for size in sizes.curve_bytes:
        if reuse is not None and size == sizes.big_bytes:
            for name in curve:
                curve[name][size] = Samples(reuse[name].label, "MiB/s", [size / MIB / t for t in reuse[name].values])
            continue
        progress(f"throughput at {size} bytes")
        samples = {name: Samples(name, "MiB/s") for name in curve}
        source, target = tmp / "curve.bin", tmp / "curve.downloaded"
        write_random_file(source, size)
        repeats = sizes.curve_repeats if size >= MIB else max(5, sizes.curve_repeats)
        for _rep in range(repeats):
            renew(source)
            key = f"bench/curve/{time.time_ns()}"

            def base_store(key: str = key) -> None:
                sha1_of(source)
                stack.s3.upload_file(str(source), stack.bucket, key)

            samples["store_base"].values.append(size / MIB / timed(base_store))
            load = timed(lambda key=key: stack.s3.download_file(stack.bucket, key, str(target)))
            samples["load_base"].values.append(size / MIB / load)
            writer = stack.fresh_client()
            uris: list[str] = []
            samples["store"].values.append(size / MIB / timed(lambda: uris.append(kcl.store_file(str(source)))))
            reader = stack.fresh_client()
            samples["load"].values.append(size / MIB / timed(lambda: kcl.load_file(uris[0])))
            for directory in (writer, reader):
                stack.drop_client(directory)
        for name in curve:
            curve[name][size] = samples[name]
        source.unlink()
        target.unlink(missing_ok=True)
    return curve
