"""Feed append throughput and long-poll wake-up latency, next to Redis Streams on the local Redis, in one run.

What is measured (kachery-cloud through a real ``api_server`` process vs Redis at 127.0.0.1:6379):

1. Single-process append throughput, messages/s: (a) one ``Feed.append_message`` per message vs one ``XADD``
   per message; (b) ``Feed.append_messages`` batches of 100 vs a MULTI/EXEC pipeline of 100 ``XADD``s (atomic,
   like an append). Same message dicts; Redis gets their compact JSON.
2. Eight writer processes (spawn), 200 single appends each to one feed, vs 200 ``XADD``s each to one stream:
   total messages/s; afterwards the feed must hold exactly 1600 messages numbered 0..1599.
3. Wake-up latency: a follower process blocks in ``get_next_messages(timeout_sec=30)`` (vs ``XREAD BLOCK``);
   the main process appends a message carrying ``time.time()``; the follower records receive time - send time.
   So it includes the append request itself, whose own latency is shown next to it.
4. 1-3 run on the embedded default (SQLite). 3 runs again on PostgreSQL with two replicas sharing one
   database: the follower on replica A, the appender on replica B (wake-up through LISTEN/NOTIFY), and, for
   context, both on replica A.

Prints throughput as median (min-max over rounds) and latencies as p50 / p95 / max, with the ratio
kachery-cloud / Redis of the medians (throughput: below 1 = slower; latency: above 1 = slower).

    .venv/bin/pip install redis                         # the baseline's client (not a project dependency)
    .venv/bin/python bench/feeds.py [N] [WAKEUPS]      # default 500 single appends per round, 50 wake-ups
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import queue
import secrets
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
ROUNDS = 3  # rounds of the single-process throughput runs, for a min-max
BATCH = 100
WRITERS, WRITES_EACH = 8, 200
SETTLE_SEC = 0.2  # before each wake-up append: time for the follower's long-poll to reach the server
QUEUE_TIMEOUT_SEC = 120.0  # spawned children import everything afresh, slowly on 2 cores


# ----------------------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


def fmt_rate(rates: Sequence[float]) -> str:
    return f"{statistics.median(rates):8.0f} msg/s ({min(rates):.0f}-{max(rates):.0f})"


def fmt_ms(seconds: Sequence[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{statistics.median(ms):6.2f} / {percentile(ms, 0.95):6.2f} / {max(ms):6.2f} ms"


def ratio(kc: Sequence[float], baseline: Sequence[float]) -> str:
    return f"{statistics.median(kc) / statistics.median(baseline):.2f}"


@dataclass
class Table:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, kc: str, baseline: str, kc_over_baseline: str) -> None:
        self.rows.append((label, kc, baseline, kc_over_baseline))

    def print(self) -> None:
        header = ("", "kachery-cloud", "Redis Streams", "kc/redis")
        widths = [max(len(row[i]) for row in [header, *self.rows]) for i in range(4)]
        for row in [header, *self.rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        for note in self.notes:
            print(note)


def progress(text: str) -> None:
    print(f"... {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- messages


def message(writer: int, index: int) -> dict[str, Any]:
    return {"writer": writer, "i": index, "kind": "bench", "text": "x" * 64}


def redis_fields(value: dict[str, Any]) -> dict[str, str]:
    # Compact, sorted JSON: about the canonical JSON kachery-cloud stores.
    return {"m": json.dumps(value, sort_keys=True, separators=(",", ":"))}


def redis_client() -> Any:
    import redis

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT)


# ----------------------------------------------------------------------------------------------- children
#
# Children are spawned (a fresh interpreter: no inherited connections, no shared GIL). They talk to the main
# process through one queue of (kind, payload) tuples: "ready", "done" or "error" (with the traceback), so a
# failing child shows its error instead of leaving the main process waiting.


def use_client_env(env: dict[str, str]) -> None:
    from kachery_cloud._connection import forget_clients

    os.environ.update(env)
    forget_clients()


def writer_child(backend: str, env: dict[str, str], target: str, writer: int, go: Any, out: Any) -> None:
    """Append WRITES_EACH messages one at a time once ``go`` is set; send back the numbers and latencies."""
    try:
        numbers: list[int] = []
        latencies: list[float] = []
        if backend == "kachery":
            use_client_env(env)
            import kachery_cloud as kcl

            feed = kcl.load_feed(target)  # also opens the connection before the clock starts

            def append(index: int) -> None:
                numbers.append(feed.append_message(message(writer, index)))
        else:
            r = redis_client()
            r.ping()

            def append(index: int) -> None:
                r.xadd(target, redis_fields(message(writer, index)))

        out.put(("ready", writer))
        if not go.wait(QUEUE_TIMEOUT_SEC):
            raise TimeoutError("no start signal")
        for index in range(WRITES_EACH):
            started = time.perf_counter()
            append(index)
            latencies.append(time.perf_counter() - started)
        out.put(("done", (numbers, latencies)))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def follower_child(backend: str, env: dict[str, str], target: str, repeats: int, out: Any) -> None:
    """Block for the next message ``repeats`` times, saying "ready" before each wait; send back the delays
    (receive time - the send time in the message)."""
    try:
        delays: list[float] = []
        if backend == "kachery":
            use_client_env(env)
            import kachery_cloud as kcl

            # On a second replica this is the check that registration is shared through the database.
            kcl.init(quiet=True)
            feed = kcl.load_feed(target)
            feed.set_position(feed.get_num_messages())

            def wait() -> list[dict[str, Any]]:
                return feed.get_next_messages(timeout_sec=30)
        else:
            r = redis_client()
            last_id = r.xinfo_stream(target)["last-generated-id"] if r.exists(target) else b"0-0"

            def wait() -> list[dict[str, Any]]:
                nonlocal last_id
                answer = r.xread({target: last_id}, block=30_000)
                entries = answer[0][1] if answer else []
                if entries:
                    last_id = entries[-1][0]
                return [json.loads(fields[b"m"]) for _, fields in entries]

        for index in range(repeats):
            out.put(("ready", index))
            received = wait()
            now = time.time()
            if len(received) != 1 or received[0].get("i") != index:
                raise AssertionError(f"wake-up {index}: expected message {index}, got {received!r}")
            delays.append(now - received[0]["sent"])
        out.put(("done", delays))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def expect(out: Any, kind: str) -> Any:
    """The next message from the children, which must be of ``kind``."""
    try:
        got, payload = out.get(timeout=QUEUE_TIMEOUT_SEC)
    except queue.Empty:
        raise TimeoutError(f"no {kind!r} from a child process within {QUEUE_TIMEOUT_SEC:.0f} s") from None
    if got == "error":
        raise RuntimeError(f"a child process failed:\n{payload}")
    if got != kind:
        raise RuntimeError(f"expected {kind!r} from a child process, got {got!r}")
    return payload


def reap(processes: list[Any]) -> None:
    """Wait for our own children; terminate any that hang (only ours, by handle)."""
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)


# ----------------------------------------------------------------------------------------------- measurements


def single_appends(append: Callable[[dict[str, Any]], object], n: int) -> tuple[list[float], list[float]]:
    """ROUNDS rounds of n single appends: (messages/s per round, latency of every append)."""
    rates: list[float] = []
    latencies: list[float] = []
    for round_number in range(ROUNDS):
        round_started = time.perf_counter()
        for index in range(n):
            started = time.perf_counter()
            append(message(round_number, index))
            latencies.append(time.perf_counter() - started)
        rates.append(n / (time.perf_counter() - round_started))
    return rates, latencies


def batch_appends(append_batch: Callable[[list[dict[str, Any]]], object], n: int) -> tuple[list[float], list[float]]:
    """ROUNDS rounds of n messages in batches of BATCH: (messages/s per round, latency of every batch)."""
    rates: list[float] = []
    latencies: list[float] = []
    batches = max(1, n // BATCH)
    for round_number in range(ROUNDS):
        round_started = time.perf_counter()
        for b in range(batches):
            batch = [message(round_number, b * BATCH + i) for i in range(BATCH)]
            started = time.perf_counter()
            append_batch(batch)
            latencies.append(time.perf_counter() - started)
        rates.append(batches * BATCH / (time.perf_counter() - round_started))
    return rates, latencies


def concurrent_writers(backend: str, env: dict[str, str], target: str) -> tuple[float, list[int], list[float]]:
    """WRITERS spawned processes appending at once: (total messages/s, numbers returned, append latencies)."""
    ctx = mp.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    processes = [
        ctx.Process(target=writer_child, args=(backend, env, target, w, go, out), daemon=True) for w in range(WRITERS)
    ]
    try:
        for process in processes:
            process.start()
        for _ in processes:
            expect(out, "ready")  # everyone imported and connected: only the appends are timed
        started = time.perf_counter()
        go.set()
        numbers: list[int] = []
        latencies: list[float] = []
        for _ in processes:
            child_numbers, child_latencies = expect(out, "done")
            numbers += child_numbers
            latencies += child_latencies
        elapsed = time.perf_counter() - started
    finally:
        go.set()  # release any child still waiting, then reap
        reap(processes)
    return WRITERS * WRITES_EACH / elapsed, numbers, latencies


def wakeups(
    backend: str, env: dict[str, str], target: str, repeats: int, append: Callable[[dict[str, Any]], object]
) -> tuple[list[float], list[float]]:
    """A spawned follower waits, this process appends: (wake-up delays, latencies of the appends alone)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    follower = ctx.Process(target=follower_child, args=(backend, env, target, repeats, out), daemon=True)
    append_latencies: list[float] = []
    try:
        follower.start()
        for index in range(repeats):
            expect(out, "ready")
            time.sleep(SETTLE_SEC)
            sent = time.time()
            append({"i": index, "sent": sent})
            append_latencies.append(time.time() - sent)
        delays = expect(out, "done")
    finally:
        reap([follower])
    return delays, append_latencies


# ----------------------------------------------------------------------------------------------- main


def client_env(client_dir: Path, api_url: str) -> dict[str, str]:
    return {"KACHERY_CLOUD_DIR": str(client_dir), "KACHERY_CLOUD_API_URL": api_url, "KACHERY_CLOUD_QUIET": "1"}


def main() -> None:
    from tests.servers import PostgresDatabases, start_server

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    r = redis_client()
    r.ping()
    prefix = f"bench:feeds:{secrets.token_hex(4)}"  # every Redis key of this run; deleted at the end
    table = Table()
    databases = PostgresDatabases()
    servers: list[Any] = []
    bench_started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            import kachery_cloud as kcl

            # ---------------------------------------------------------------- SQLite (embedded default)
            progress("starting the embedded server (SQLite)")
            server = start_server(tmp / "sqlite-server")
            servers.append(server)
            env = client_env(tmp / "client-sqlite", server.url)
            use_client_env(env)
            kcl.init(quiet=True)

            warm = kcl.create_feed()  # warm connections, caches and the server's code paths
            for i in range(20):
                warm.append_message(message(-1, i))
            for i in range(20):
                r.xadd(f"{prefix}:warm", redis_fields(message(-1, i)))

            progress(f"single appends: {ROUNDS} rounds of {n}")
            feed = kcl.create_feed()
            kc_single, kc_single_lat = single_appends(feed.append_message, n)
            stream = f"{prefix}:single"
            rd_single, rd_single_lat = single_appends(lambda m: r.xadd(stream, redis_fields(m)), n)

            def redis_batch(batch: list[dict[str, Any]]) -> None:
                pipe = r.pipeline(transaction=True)
                for m in batch:
                    pipe.xadd(stream, redis_fields(m))
                pipe.execute()

            progress(f"batch appends: {ROUNDS} rounds of {max(1, n // BATCH)} x {BATCH}")
            kc_batch, kc_batch_lat = batch_appends(feed.append_messages, n)
            rd_batch, rd_batch_lat = batch_appends(redis_batch, n)
            table.add("append_message, 1 per call", fmt_rate(kc_single), fmt_rate(rd_single),
                      ratio(kc_single, rd_single))  # fmt: skip
            table.add("  latency per call p50/p95/max", fmt_ms(kc_single_lat), fmt_ms(rd_single_lat),
                      ratio(kc_single_lat, rd_single_lat))  # fmt: skip
            table.add(f"append_messages, {BATCH} per call", fmt_rate(kc_batch), fmt_rate(rd_batch),
                      ratio(kc_batch, rd_batch))  # fmt: skip
            table.add("  latency per call p50/p95/max", fmt_ms(kc_batch_lat), fmt_ms(rd_batch_lat),
                      ratio(kc_batch_lat, rd_batch_lat))  # fmt: skip

            progress(f"{WRITERS} writer processes x {WRITES_EACH} appends")
            shared = kcl.create_feed()
            kc_rate, kc_numbers, kc_conc_lat = concurrent_writers("kachery", env, shared.uri)
            shared_stream = f"{prefix}:concurrent"
            rd_rate, _, rd_conc_lat = concurrent_writers("redis", env, shared_stream)
            total = WRITERS * WRITES_EACH
            records = shared.get_message_records(0)
            stored = [record.number for record in records]
            pairs = {(rec.message["writer"], rec.message["i"]) for rec in records}
            checks = {
                f"feed holds messages 0..{total - 1}": stored == list(range(total)),
                "numbers returned to the writers are 0..N-1, once each": sorted(kc_numbers) == list(range(total)),
                "every (writer, i) stored once": len(pairs) == total == len(records),
                f"Redis stream length {total}": r.xlen(shared_stream) == total,
            }
            table.add(f"{WRITERS} processes x {WRITES_EACH} appends, total", f"{kc_rate:8.0f} msg/s",
                      f"{rd_rate:8.0f} msg/s", f"{kc_rate / rd_rate:.2f}")  # fmt: skip
            table.add("  latency per call p50/p95/max", fmt_ms(kc_conc_lat), fmt_ms(rd_conc_lat),
                      ratio(kc_conc_lat, rd_conc_lat))  # fmt: skip
            table.notes.append(
                f"concurrent check ({len(stored)} messages read back): "
                + ", ".join(f"{name}: {'OK' if ok else 'FAILED'}" for name, ok in checks.items())
            )

            progress(f"wake-ups on SQLite: {repeats}")
            follow = kcl.create_feed()
            kc_wake, kc_wake_append = wakeups("kachery", env, follow.uri, repeats, follow.append_message)
            wake_stream = f"{prefix}:wake"
            rd_wake, rd_wake_append = wakeups(
                "redis", env, wake_stream, repeats, lambda m: r.xadd(wake_stream, redis_fields(m))
            )
            table.add("wake-up, SQLite p50/p95/max", fmt_ms(kc_wake), fmt_ms(rd_wake), ratio(kc_wake, rd_wake))
            table.add("  of which the append p50/p95/max", fmt_ms(kc_wake_append), fmt_ms(rd_wake_append),
                      ratio(kc_wake_append, rd_wake_append))  # fmt: skip
            server.stop()

            # ---------------------------------------------------------------- PostgreSQL, two replicas
            progress("starting two replicas on one PostgreSQL database")
            database_url = databases.create()
            replica_a = start_server(tmp / "pg-a", database_url=database_url)
            servers.append(replica_a)
            replica_b = start_server(tmp / "pg-b", database_url=database_url)
            servers.append(replica_b)
            env_a = client_env(tmp / "client-pg", replica_a.url)
            env_b = client_env(tmp / "client-pg", replica_b.url)  # same client dir, so the same identity
            use_client_env(env_b)
            registered = kcl.init(quiet=True)  # registers on B; A must find it through the shared database
            use_client_env(env_a)
            seen_on_a = kcl.get_client_info()  # a plain signed call to A: no registration step on A
            table.notes.append(
                "registration through replica B seen by replica A (GET /api/clients/me): "
                + ("OK" if seen_on_a["client_id"] == registered["client_id"] else f"FAILED: {seen_on_a!r}")
            )
            use_client_env(env_b)
            pg_feed = kcl.create_feed()
            for i in range(20):
                pg_feed.append_message(message(-1, i))

            progress(f"wake-ups across replicas (follower on A, appender on B): {repeats}")
            pg_cross, pg_cross_append = wakeups("kachery", env_a, pg_feed.uri, repeats, pg_feed.append_message)
            table.add("wake-up, PostgreSQL A<-B p50/p95/max", fmt_ms(pg_cross), fmt_ms(rd_wake),
                      ratio(pg_cross, rd_wake))  # fmt: skip
            table.add("  of which the append (to B)", fmt_ms(pg_cross_append), fmt_ms(rd_wake_append),
                      ratio(pg_cross_append, rd_wake_append))  # fmt: skip

            progress(f"wake-ups on one replica (both on A): {repeats}")
            use_client_env(env_a)
            pg_feed_a = kcl.load_feed(pg_feed.uri)  # its client talks to A
            pg_same, pg_same_append = wakeups("kachery", env_a, pg_feed.uri, repeats, pg_feed_a.append_message)
            table.add("wake-up, PostgreSQL A<-A p50/p95/max", fmt_ms(pg_same), fmt_ms(rd_wake),
                      ratio(pg_same, rd_wake))  # fmt: skip
            table.add("  of which the append (to A)", fmt_ms(pg_same_append), fmt_ms(rd_wake_append),
                      ratio(pg_same_append, rd_wake_append))  # fmt: skip
        finally:
            for running in servers:
                running.stop()
            databases.drop_all()
            keys = list(r.scan_iter(match=f"{prefix}:*"))
            if keys:
                r.delete(*keys)

    print()
    print(
        f"feeds bench: {n} single appends x {ROUNDS} rounds, batches of {BATCH}, {WRITERS} writers x {WRITES_EACH}, "
        f"{repeats} wake-ups ({SETTLE_SEC:.1f} s apart); {os.cpu_count()} CPUs; "
        f"{time.perf_counter() - bench_started:.0f} s in all"
    )
    print("throughput: median (min-max over rounds); latency: p50 / p95 / max; ratio of the medians")
    print("wake-up = receive time in the follower process - time.time() just before the append call")
    table.print()


if __name__ == "__main__":
    main()
