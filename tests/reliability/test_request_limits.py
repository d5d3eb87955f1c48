"""What a hostile network client can make of the API server's limits: fresh keys and forged addresses do not
dodge the rate limits, pending registrations are capped per address, and long-polls are capped per client. Every
check talks to a real server process over real sockets, on 127.0.0.0/8 only."""

from __future__ import annotations

import concurrent.futures as cf
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from kachery_cloud.identity import ClientIdentity
from kachery_cloud.protocol.feed_format import message_body, signed_bytes

from ..helpers import new_identity
from ..servers import RunningServer
from .conftest import Figures
from .limits_kit import (
    FIND,
    FIND_BODY,
    JSON,
    LONG_POLLS,
    MAX_PENDING,
    PER_ADDRESS,
    REGISTER,
    REGISTER_BODY,
    assert_rate_limited,
    call,
    record,
    served_bound,
    signed,
)

# ------------------------------------------------------------------------------------------------ rate limits


def test_fresh_unregistered_keys_share_their_address_limit(limited: RunningServer, figures: Figures, soak: bool):
    count = 240 if soak else 60
    registered = new_identity()
    limited.admin("register-client", registered.client_id)
    time.sleep(1.1)  # a fresh window
    fresh, control = [], []
    start = time.monotonic()
    for _ in range(count):  # interleaved: the same address, at the same moments
        fresh.append(signed(limited, new_identity(), "POST", FIND, FIND_BODY))
        control.append(signed(limited, registered, "POST", FIND, FIND_BODY))
    elapsed = time.monotonic() - start
    statuses = [a[0] for a in fresh]
    assert set(statuses) <= {200, 429}, statuses
    assert_rate_limited([a for a in fresh if a[0] == 429])
    assert statuses.count(200) <= served_bound(elapsed), (statuses, elapsed)
    assert statuses.count(429) > count // 2, f"most fresh keys must be refused: {statuses}"
    # A registered client spends its own (generous) budget, not the address's that the fresh keys exhausted.
    assert [a[0] for a in control] == [200] * count, [a[1:] for a in control if a[0] != 200][:3]
    record(
        figures,
        "3 rate limits: fresh keys against the address limit",
        count,
        count,
        elapsed,
        {
            "fresh_key_requests": count,
            "refused_429": statuses.count(429),
            "served": statuses.count(200),
            "registered_control_served": count,
            "limit": f"{PER_ADDRESS}/second",
        },
    )


def find_with_forwarded(server: RunningServer, forwarded: list[str | None]) -> list[int]:
    statuses = []
    for value in forwarded:
        headers = {**JSON, **({"X-Forwarded-For": value, "X-Real-IP": value} if value else {})}
        statuses.append(call(server, "POST", FIND, FIND_BODY, headers)[0])
    return statuses


def test_forwarded_for_is_trusted_only_from_a_trusted_proxy(
    limited: RunningServer, proxied: RunningServer, figures: Figures
) -> None:
    burst = 30
    rotating = [f"10.1.3.{i}" for i in range(burst)]
    time.sleep(1.1)
    start = time.monotonic()
    untrusted = find_with_forwarded(limited, rotating)  # no trusted proxies: counted by 127.0.0.1
    elapsed = time.monotonic() - start
    assert 429 in untrusted and untrusted.count(200) <= served_bound(elapsed), untrusted
    # Behind a trusted proxy on 127.0.0.1 each X-Forwarded-For is its own client...
    trusted_rotating = find_with_forwarded(proxied, rotating)
    assert trusted_rotating == [200] * burst, trusted_rotating
    # ...so the same burst from one of them is limited, against that address and not the proxy's.
    one = find_with_forwarded(proxied, ["10.1.2.3"] * burst)
    assert 429 in one, one
    assert find_with_forwarded(proxied, ["10.1.2.3", "10.1.2.4", None]) == [429, 200, 200]
    record(
        figures,
        "3 rate limits: forwarded addresses",
        3 * burst,
        burst,
        {
            "untrusted_rotating_refused": untrusted.count(429),
            "trusted_rotating_refused": 0,
            "trusted_one_address_refused": one.count(429),
            "burst": burst,
        },
    )


def test_pending_registrations_are_capped_per_address(google: RunningServer, figures: Figures, soak: bool):
    count = 200 if soak else 60

    def register(identity: ClientIdentity, source: str = "127.0.0.1") -> tuple[int, dict[str, str], Any]:
        return signed(google, identity, "POST", REGISTER, REGISTER_BODY, source=source)

    repeat = new_identity()
    status, _, first = register(repeat)
    assert status == 200 and first["status"] == "pending", first
    with cf.ThreadPoolExecutor(8) as pool:  # concurrently, as an attacker would
        answers = list(pool.map(lambda _: register(new_identity()), range(count)))
    pending = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert len(pending) == MAX_PENDING - 1, [a[0] for a in answers]
    assert all(a[2]["status"] == "pending" for a in pending)
    assert len({a[2]["registration_id"] for a in pending} | {first["registration_id"]}) == MAX_PENDING
    assert_rate_limited(refused)
    # The same client asking again, even at the cap, gets its pending registration back, not a new one.
    for _ in range(3):
        status, _, again = register(repeat)
        assert status == 200 and again["registration_id"] == first["registration_id"], again
    # The cap is per address: another machine may still register.
    status, _, other = register(new_identity(), source="127.0.0.2")
    assert status == 200 and other["status"] == "pending", other
    with sqlite3.connect(f"file:{google.data_dir / 'server.db'}?mode=ro", uri=True) as db:
        rows = dict(db.execute("SELECT address, COUNT(*) FROM registrations GROUP BY address").fetchall())
    assert rows == {"127.0.0.1": MAX_PENDING, "127.0.0.2": 1}, rows
    record(
        figures,
        "3 rate limits: pending registrations per address",
        count + 5,
        count,
        {
            "registrations_sent": count + 1,
            "pending_created": rows["127.0.0.1"],
            "refused_429": len(refused),
            "cap": MAX_PENDING,
        },
    )


# ------------------------------------------------------------------------------------------------ long-polls


def test_long_polls_are_capped_per_client(limited: RunningServer, figures: Figures) -> None:
    alice, bob = new_identity(), new_identity()
    for identity in (alice, bob):
        limited.admin("register-client", identity.client_id)
    status, _, feed = signed(limited, alice, "POST", "/api/feeds", b"{}")
    assert status == 200, feed
    feed_id = feed["feed_id"]

    def poll(identity: ClientIdentity, start: int, wait_ms: int) -> Callable[[], tuple[int, dict[str, str], Any]]:
        target = f"/api/feeds/{feed_id}/messages?start={start}&wait_ms={wait_ms}"
        return lambda: signed(limited, identity, "GET", target, timeout=60)

    with cf.ThreadPoolExecutor(LONG_POLLS + 2) as pool:
        first = [pool.submit(poll(alice, 0, 10_000)) for _ in range(LONG_POLLS + 1)]
        done, waiting = cf.wait(first, timeout=8, return_when=cf.FIRST_COMPLETED)
        assert len(done) == 1, "no long-poll was refused while LONG_POLLS + 1 waited"
        assert_rate_limited([f.result() for f in done])
        other = pool.submit(poll(bob, 0, 300)).result()  # another client: served (an empty page, after 300 ms)
        again = poll(alice, 0, 10_000)()  # alice, while her 4 still wait: refused
        assert not any(f.done() for f in waiting), "a long-poll ended without a message"
        message = message_body({"wake": "up"})
        body = {"append_id": secrets.token_hex(16), "messages": [{"body": message,
                "signature": alice.sign(signed_bytes(feed_id, message))}]}  # fmt: skip
        appended = signed(limited, alice, "POST", f"/api/feeds/{feed_id}/messages", json.dumps(body).encode())
        woken = [f.result(timeout=30) for f in waiting]
        later = list(pool.map(lambda f: f(), [poll(alice, 1, 300) for _ in range(LONG_POLLS)]))
    assert other[0] == 200 and other[2]["messages"] == [], other
    assert_rate_limited([again])
    assert appended[0] == 200, appended
    assert [(s, len(b["messages"])) for s, _, b in woken] == [(200, 1)] * LONG_POLLS, woken
    assert [a[0] for a in later] == [200] * LONG_POLLS, later
    record(
        figures,
        "4 long-polls per client",
        2 * LONG_POLLS + 3,
        2,
        {"cap": LONG_POLLS, "refused_over_cap": 2, "other_client_served": True, "served_after": LONG_POLLS},
    )
