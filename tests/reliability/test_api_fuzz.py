"""Item 6 of the reliability suite: the server's own OpenAPI document, fuzzed with schemathesis.

The schema is loaded from ``/openapi.json`` of a real server process, and schemathesis generates requests for
every operation, both valid (positive) and invalid (negative) by the schema. Each request goes to the server in
one of two ways:

- unsigned or forged: no signature headers, some of them, malformed ones, a random signature, a stale
  timestamp, a signature over another request, a replay, or a correct signature by a key nobody registered;
- signed by a registered client (the local owner, admin of the projects), signed when the request is sent, so
  that the fuzzer gets past authentication into the handlers' validation and the services. Generated ids are
  sometimes swapped for ids that exist (a project, a feed, a task, an upload, a claim ...), so that the
  services are reached with real rows, not only with 404s.

In both ways, one string field of about a quarter of the cases is replaced by a hostile string (NUL, a lone
surrogate, a path trick ...; see :data:`HOSTILE_TEXT`). The server runs without rate limits (see
:data:`SERVER_SETTINGS`).

For every request: no 5xx, an answer within :data:`REQUEST_TIMEOUT_SEC` (else it counts as a hang), every 4xx a
JSON body with an ``error_code`` and a ``message`` (doc/api.md, api_server/app.py), every 2xx conforming to the
schema. A forged signature is never accepted by an operation that authenticates, and a correct one is never
refused as a bad signature. Long-polls: a valid ``wait_ms`` is lowered to :data:`LONG_POLL_CAP_MS` before the
request is signed, so that their documented waiting (up to 30 s) is not taken for a hang; values outside the
documented range are sent as generated (they must be refused at once).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from kachery_cloud.identity import ClientIdentity
from kachery_cloud.protocol.feed_format import SIGNED_MESSAGE_TAG
from kachery_cloud.protocol.request_signing import (
    HEADER_CLIENT_ID,
    HEADER_NONCE,
    HEADER_SERVER_ID,
    HEADER_TIMESTAMP,
    SIGNATURE_HEADERS,
    body_digest,
)

from ..helpers import new_identity, signed_headers
from ..servers import PostgresDatabases, RunningServer, start_server
from .conftest import Figure, Figures

ITEM = "6 OpenAPI fuzz (schemathesis)"
REQUEST_TIMEOUT_SEC = 10.0  # no answer within this is a hang
LONG_POLL_CAP_MS = 200  # valid long-poll waits are lowered to this (see the module docstring)
MAX_WAIT_MS = 30_000  # the documented longest wait_ms (feeds and tasks)
# Generated requests per operation and signing mode, each positive or negative by the schema at random. With 29
# operations, 2 modes and 2 database backends, CI sends about 1,800 requests (under a minute);
# --soak about 36,000.
EXAMPLES_CI = 15
EXAMPLES_SOAK = 300

# No rate limits: the fuzzer tests the handlers, not the limiter (tests/reliability/test_rate_limits.py does), and at
# --soak rates one address would otherwise be answered 429 for most of the run.
SERVER_SETTINGS = {"rate_limit_per_client": None, "rate_limit_per_address": None}

# The operations that do not look at signatures at all; every other one authenticates the caller.
UNAUTHENTICATED = {
    ("GET", "/api/health"),
    ("GET", "/api/health/ready"),
    ("POST", "/api/registrations/{registration_id}/google"),
}
# Ways of getting a signature wrong. None of them may ever be answered with a 2xx by an authenticating operation.
FORGED = ("partial", "malformed", "random_signature", "stale", "tampered", "replayed", "other_server", "v1")
# 401 codes that mean "your signature is wrong": never the answer to a request signed correctly.
SIGNATURE_REFUSALS = {"missing_signature", "malformed_signature", "bad_signature", "stale_timestamp", "replayed_nonce",
                      "wrong_server", "upgrade_required"}  # fmt: skip


@dataclass(frozen=True)
class SigningPlan:
    """How one request is signed; applied when it is sent, after schemathesis has produced its bytes."""

    kind: str  # "valid", "none", "unregistered" or one of FORGED
    identity: ClientIdentity | None = None
    dropped: tuple[str, ...] = ()  # partial: the headers left out
    garbage: tuple[str, ...] = ()  # malformed: the five header values
    skew_ms: int = 0  # stale: how far the timestamp is off
    tamper: str = ""  # tampered: which signed part differs from what is sent


class SignAtSend(requests.auth.AuthBase):
    """Signs the prepared request: method, target and body exactly as they go on the wire."""

    def __init__(self, plan: SigningPlan) -> None:
        self.plan = plan

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        plan = self.plan
        if isinstance(r.body, str):  # make the bytes explicit, so that the digest is of what is sent
            r.body = r.body.encode("utf-8")
            r.headers["Content-Length"] = str(len(r.body))
        if plan.kind == "none":
            return r
        if plan.kind == "malformed":
            r.headers.update(dict(zip(SIGNATURE_HEADERS, plan.garbage, strict=True)))
            return r
        identity = plan.identity
        if plan.kind == "random_signature" or identity is None:
            identity = new_identity()  # well-formed headers; the signature is by another key than the id's
            headers = _signed_headers(identity, r)
            headers[HEADER_CLIENT_ID] = new_identity().client_id
        elif plan.kind == "stale":
            headers = _signed_headers(identity, r, skew_ms=plan.skew_ms)
        elif plan.kind == "tampered":
            headers = _signed_headers(identity, r, tamper=plan.tamper)
        elif plan.kind == "other_server":  # a request signed for another server, replayed to this one
            headers = _signed_headers(identity, r, server_id=secrets.token_hex(16))
        elif plan.kind == "v1":  # a client of the scheme before servers were named: no X-Kachery-Server
            headers = _signed_headers(identity, r)
            del headers[HEADER_SERVER_ID]
        else:  # valid, replayed (sent twice), partial, unregistered
            headers = _signed_headers(identity, r)
        for name in plan.dropped:
            del headers[name]
        r.headers.update(headers)
        return r


def _signed_headers(
    identity: ClientIdentity, r: requests.PreparedRequest, *, skew_ms: int = 0, tamper: str = "", server_id: str = ""
) -> dict[str, str]:
    """Headers for ``r``; with ``tamper``, the signature covers that part changed while the request carries the
    true one (a signature over something else)."""
    body = r.body if isinstance(r.body, bytes) else b""
    timestamp_ms, nonce = int(time.time() * 1000) + skew_ms, secrets.token_hex(16)
    forged: dict[str, Any] = {
        "method": {"method": "PUT" if r.method != "PUT" else "PATCH"},
        "target": {"target": r.path_url + "x"},
        "body": {"body_sha256": body_digest(body + b" ")},
        "timestamp": {"timestamp_ms": timestamp_ms + 1},
        "nonce": {"nonce": secrets.token_hex(16)},
        "server": {"server_id": secrets.token_hex(16)},
    }.get(tamper, {})
    parts = urlsplit(str(r.url))
    server = f"{parts.scheme}://{parts.netloc}"
    if server_id:
        forged["server_id"] = server_id
    headers = signed_headers(
        identity,
        str(r.method),
        r.path_url,
        body,
        server=server,
        **{"timestamp_ms": timestamp_ms, "nonce": nonce, **forged},
    )
    if server_id:
        headers[HEADER_SERVER_ID] = server_id
    return {**headers, HEADER_TIMESTAMP: str(timestamp_ms), HEADER_NONCE: nonce}


@dataclass
class FuzzTarget:
    """A running server, its schema, a registered client and ids of rows that exist."""

    server: RunningServer
    backend: str
    schema: Any
    identity: ClientIdentity
    window_sec: int
    existing: dict[str, list[Any]]


@dataclass
class Tally:
    """What one fuzzing run sent and saw."""

    requests: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    ok_operations: set[str] = field(default_factory=set)
    errors: int = 0
    # "METHOD /path/{template}: problem" -> the first few requests that showed it
    failures: dict[str, list[str]] = field(default_factory=dict)

    def fail(self, what: str, plan: SigningPlan, request: Any, status: object, text: str) -> None:
        self.errors += 1
        examples = self.failures.setdefault(what, [])
        example = f"[{plan.kind}]\n{_describe_request(request)}\n  -> {status}: {text[:600]}"
        if len(examples) < 2 and example not in examples:
            examples.append(example)


def _describe_request(r: Any) -> str:
    if not isinstance(r, requests.PreparedRequest):
        return "  (request not prepared)"
    body = r.body if isinstance(r.body, bytes) else (r.body or "").encode()
    return f"  {r.method} {r.path_url}\n  body: {body[:1500]!r}"


def _post_signed(target_url: str, identity: ClientIdentity, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(
        f"{target_url}{path}",
        json=payload,
        auth=SignAtSend(SigningPlan("valid", identity)),
        timeout=REQUEST_TIMEOUT_SEC,
    )
    assert response.status_code == 200, f"setup {path}: {response.status_code} {response.text}"
    return response.json()


def _prepare(server: RunningServer, backend: str) -> FuzzTarget:
    """Register a client (signed by its own key, as the owner, local mode) and create rows for the fuzzer to hit."""
    identity = new_identity()
    url = server.url
    registered = _post_signed(
        url,
        identity,
        "/api/clients/register",
        {"label": "fuzzer", "owner_proof": server.owner_proof(identity.client_id)},
    )
    assert registered["status"] == "registered", registered
    public_project = f"fuzz-open-{secrets.token_hex(3)}"
    server.admin("create-project", public_project, "--public")  # owned by the local owner, as is our client
    feed = _post_signed(url, identity, "/api/feeds", {"project_id": "default"})
    feed_body = '{"n":1}'
    feed_message = {
        "body": feed_body,
        "signature": identity.sign(f"{SIGNED_MESSAGE_TAG}\n{feed['feed_id']}\n{feed_body}".encode()),
    }
    task = _post_signed(
        url,
        identity,
        "/api/tasks/request",
        {"project_id": "default", "task_type": "calculation", "task_name": "fuzz.claimed", "task_input": {"x": 1}},
    )
    _post_signed(
        url,
        identity,
        "/api/tasks/request",
        {"project_id": "default", "task_type": "calculation", "task_name": "fuzz.pending", "task_input": {"x": 2}},
    )
    worker_id = secrets.token_hex(16)
    claimed = _post_signed(
        url,
        identity,
        "/api/tasks/claim",
        {
            "project_id": "default",
            "handlers": [{"task_type": "calculation", "task_name": "fuzz.claimed"}],
            "worker_id": worker_id,
        },
    )
    content = b"fuzz upload"
    sha1 = hashlib.sha1(content).hexdigest()
    needed = _post_signed(url, identity, "/api/blobs/need", {"blobs": [{"sha1": sha1, "size": len(content)}]})
    _post_signed(url, identity, "/api/mutables/set", {"key": "@fuzz/@a/latest", "value": "sha1://" + "0" * 40})
    health = requests.get(f"{url}/api/health", timeout=REQUEST_TIMEOUT_SEC).json()
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    existing: dict[str, list[Any]] = {
        "project_id": ["default", public_project],
        "feed_id": [feed["feed_id"]],
        "task_id": [task["task_id"]],
        "claim_id": [t["claim_id"] for t in claimed["tasks"]],
        "worker_id": [worker_id],
        "upload_id": [r["upload_id"] for r in needed["results"] if r.get("upload_id")],
        "sha1": [sha1],
        "sha1s": [[sha1]],
        "key": ["@fuzz/@a/latest", "@fuzz/@a/other"],
        "folder_key": ["@fuzz", "@fuzz/@a"],
        "messages": [[feed_message]],
        "task_name": ["fuzz.claimed", "fuzz.pending"],
        "handlers": [[{"task_type": "calculation", "task_name": "fuzz.pending"}]],
    }
    return FuzzTarget(server, backend, schema, identity, int(health["signature_window_sec"]), existing)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases
) -> Iterator[FuzzTarget]:
    database_url = postgres.create() if request.param == "postgresql" else None
    server = start_server(
        tmp_path_factory.mktemp(f"fuzz-{request.param}"), database_url=database_url, settings=SERVER_SETTINGS
    )
    try:
        yield _prepare(server, request.param)
    finally:
        server.stop()


def _swap_in_existing(value: Any, existing: dict[str, list[Any]], choose: st.DataObject) -> Any:
    """Replace, at any depth, the values of fields named like an existing row's id by such an id."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in existing and choose.draw(st.booleans(), label=f"swap {k}"):
                out[k] = choose.draw(st.sampled_from(existing[k]), label=k)
            else:
                out[k] = _swap_in_existing(v, existing, choose)
        return out
    if isinstance(value, list):
        return [_swap_in_existing(v, existing, choose) for v in value]
    return value


# Strings that break servers more often than random text does: NUL (which PostgreSQL text cannot hold), path
# tricks, right-to-left override, astral and lone-surrogate code points, and a long value. Generated strings
# seldom land exactly on an optional id such as project_id, so one string field of some cases is swapped for
# one of these. Lone surrogates go in JSON bodies only: a URL cannot carry them.
HOSTILE_TEXT = ("\x00", "a\x00b", "default\x00", "%00", "..", "../default", " ", "\u202e", "\U0001d54f", "x" * 5000)
HOSTILE_JSON_TEXT = (*HOSTILE_TEXT, "\ud800", "a\udfffb")


def _string_fields(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Where ``value`` holds strings, as paths of keys and indexes."""
    if isinstance(value, str):
        yield at
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _string_fields(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_fields(v, (*at, i))


def _replaced(value: Any, at: tuple[Any, ...], new: Any) -> Any:
    if not at:
        return new
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    copy[at[0]] = _replaced(value[at[0]], at[1:], new) if len(at) > 1 else new
    return copy


def _inject_hostile_text(case: schemathesis.Case, choose: st.DataObject) -> None:
    """Put a hostile string in one string field of ``case`` (or in a body's optional project_id)."""
    places: list[tuple[str, tuple[Any, ...]]] = []
    for location in ("path_parameters", "query", "body"):
        container = getattr(case, location)
        if isinstance(container, dict | list) and container:
            places += [(location, at) for at in _string_fields(container)]
    if isinstance(case.body, dict) and "project_id" not in case.body:
        places.append(("body", ("project_id",)))
    if not places:
        return
    location, at = choose.draw(st.sampled_from(places), label="hostile field")
    text = choose.draw(st.sampled_from(HOSTILE_JSON_TEXT if location == "body" else HOSTILE_TEXT), label="hostile")
    setattr(case, location, _replaced(getattr(case, location), at, text))


def _cap_wait(container: Any) -> None:
    """Lower a valid long-poll wait, so that waiting as documented is not taken for a hang."""
    if not isinstance(container, dict) or "wait_ms" not in container:
        return
    wait = container["wait_ms"]
    if isinstance(wait, bool) or not isinstance(wait, int | float | str):
        return
    try:  # as leniently as the server's models read numbers: 2e4, "20000" and 20000.0 are valid waits too
        number = float(wait)
    except ValueError:
        return
    if LONG_POLL_CAP_MS < number <= MAX_WAIT_MS:
        container["wait_ms"] = LONG_POLL_CAP_MS


def _signing_plans(target: FuzzTarget, mode: str) -> st.SearchStrategy[SigningPlan]:
    if mode == "signed":
        return st.just(SigningPlan("valid", target.identity))
    ascii_text = st.text(alphabet=string.printable.strip() + " ", max_size=140)
    window_ms = target.window_sec * 1000
    return st.one_of(
        st.just(SigningPlan("none")),
        st.builds(
            lambda dropped: SigningPlan("partial", target.identity, dropped=tuple(dropped)),
            st.lists(st.sampled_from(SIGNATURE_HEADERS), min_size=1, max_size=3, unique=True),
        ),
        st.builds(
            lambda garbage: SigningPlan("malformed", garbage=tuple(garbage)),
            # Empty values included: headers present but empty are a signature that does not verify.
            st.lists(
                st.one_of(st.just(""), ascii_text), min_size=len(SIGNATURE_HEADERS), max_size=len(SIGNATURE_HEADERS)
            ),
        ),
        st.just(SigningPlan("random_signature")),
        st.builds(
            lambda skew, sign: SigningPlan("stale", target.identity, skew_ms=skew * sign),
            st.integers(window_ms + 1000, 10**12),
            st.sampled_from([-1, 1]),
        ),
        st.builds(
            lambda tamper: SigningPlan("tampered", target.identity, tamper=tamper),
            st.sampled_from(["method", "target", "body", "timestamp", "nonce", "server"]),
        ),
        st.just(SigningPlan("replayed", target.identity)),
        st.just(SigningPlan("other_server", target.identity)),
        st.just(SigningPlan("v1", target.identity)),
        # A fresh key each time: POST /api/clients/register would register a shared one.
        st.builds(lambda: SigningPlan("unregistered", new_identity())),
    )


def _error_body_problem(response: requests.Response) -> str | None:
    """What is wrong with a 4xx body, or None if it is JSON with an error_code and a message."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return f"content-type {response.headers.get('content-type')!r}, not JSON"
    try:
        payload = response.json()
    except ValueError:
        return "body is not JSON"
    if not isinstance(payload, dict):
        return "body is not a JSON object"
    if not (isinstance(payload.get("error_code"), str) and payload["error_code"]):
        return "no error_code"
    if not (isinstance(payload.get("message"), str) and payload["message"].strip()):
        return "no message"
    return None


def _fuzz(target: FuzzTarget, mode: str, examples: int) -> tuple[Tally, int]:
    """Send ``examples`` generated requests per operation (each positive or negative by the schema, at random),
    signed as ``mode`` says; return the tally and how many operations the schema has."""
    tally = Tally()
    session = requests.Session()
    operations = [result.ok() for result in target.schema.get_all_operations()]
    assert len(operations) >= 25, f"the OpenAPI document lists only {len(operations)} operations"
    url = target.server.url

    def send(case: schemathesis.Case, plan: SigningPlan) -> None:
        label = f"{case.method.upper()} {case.path}"
        try:
            response = case.call(base_url=url, session=session, auth=SignAtSend(plan), timeout=REQUEST_TIMEOUT_SEC)
        except requests.Timeout as e:
            tally.requests += 1
            tally.by_status["hang"] += 1
            tally.fail(f"{label}: no answer within {REQUEST_TIMEOUT_SEC} s", plan, e.request, "hang", "")
            return
        except UnicodeError:  # a generated value that requests cannot put on the wire (not the server's doing)
            tally.by_status["not sendable"] += 1
            return
        except requests.ConnectionError as e:
            tally.requests += 1
            tally.by_status["no connection"] += 1
            tally.fail(f"{label}: connection failed", plan, e.request, "no connection", str(e))
            return
        tally.requests += 1
        raw = _as_requests_response(response)
        check_response(case, raw, response, plan, label, forged=plan.kind in FORGED and plan.kind != "replayed")
        if plan.kind == "replayed":  # the very same bytes and headers again
            try:
                replay = session.send(raw.request, timeout=REQUEST_TIMEOUT_SEC)
            except requests.RequestException as e:
                tally.requests += 1
                tally.by_status["hang"] += 1
                tally.fail(f"{label} (replay): no answer", plan, raw.request, "hang", str(e))
                return
            tally.requests += 1
            check_response(case, replay, None, plan, f"{label} (replay)", forged=True)

    def check_response(
        case: schemathesis.Case,
        raw: requests.Response,
        response: schemathesis.Response | None,
        plan: SigningPlan,
        label: str,
        *,
        forged: bool,
    ) -> None:
        status = raw.status_code
        tally.by_status[str(status)] += 1
        if status >= 500:
            tally.fail(f"{label}: server error", plan, raw.request, status, raw.text)
            return
        if 200 <= status < 300:
            tally.ok_operations.add(label)
            authenticates = (case.method.upper(), case.path) not in UNAUTHENTICATED
            if forged and authenticates:
                tally.fail(f"{label}: a forged signature was accepted", plan, raw.request, status, raw.text)
            if response is not None:
                try:
                    case.validate_response(response, checks=[response_schema_conformance])
                except FailureGroup as e:  # the answer does not match the schema
                    tally.fail(f"{label}: 2xx answer does not match the schema", plan, raw.request, status, str(e))
            return
        if not 400 <= status < 500:
            tally.fail(f"{label}: unexpected status", plan, raw.request, status, raw.text)
            return
        problem = _error_body_problem(raw)
        if problem:
            tally.fail(f"{label}: 4xx without a proper error body ({problem})", plan, raw.request, status, raw.text)
            return
        code = raw.json()["error_code"]
        if plan.kind == "valid" and status == 401 and code in SIGNATURE_REFUSALS:
            tally.fail(f"{label}: a correct signature was refused", plan, raw.request, status, raw.text)

    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,  # every run explores afresh; failures are reported by their requests
            phases=[Phase.explicit, Phase.generate],  # nothing raises, so there is nothing to shrink
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy, plan=_signing_plans(target, mode), choose=st.data())
        def run(case: schemathesis.Case, plan: SigningPlan, choose: st.DataObject) -> None:
            if choose.draw(st.booleans(), label="use existing ids"):
                if case.path_parameters:
                    case.path_parameters = _swap_in_existing(case.path_parameters, target.existing, choose)
                if isinstance(case.body, dict):
                    case.body = _swap_in_existing(case.body, target.existing, choose)
                if case.query:
                    case.query = _swap_in_existing(case.query, target.existing, choose)
            if choose.draw(st.integers(0, 3), label="hostile text") == 0:
                _inject_hostile_text(case, choose)
            _cap_wait(case.query)
            _cap_wait(case.body)
            send(case, plan)

        run()
        if target.server.process.poll() is not None:
            exited = f"the server exited with {target.server.process.returncode}"
            tally.fail(exited, SigningPlan(mode), None, "exit", "")
            break
    return tally, len(operations)


def _as_requests_response(response: schemathesis.Response) -> requests.Response:
    """The schemathesis answer as a ``requests.Response`` (one type for the checks)."""
    raw = requests.Response()
    raw.status_code = response.status_code
    raw._content = response.content
    raw.headers = requests.structures.CaseInsensitiveDict({k: ", ".join(v) for k, v in response.headers.items()})
    raw.request = response.request
    raw.encoding = response.encoding or "utf-8"
    return raw


def _report(target: FuzzTarget, mode: str, tally: Tally, operations: int, figures: Figures, seconds: float) -> None:
    figures.record(
        Figure(
            item=ITEM,
            runs=tally.requests,
            errors=tally.errors,
            seconds=seconds,
            details={
                "backend": target.backend,
                "mode": mode,
                "operations": operations,
                "operations_with_2xx": len(tally.ok_operations),
                "by_status": dict(sorted(tally.by_status.items())),
            },
        )
    )


_TRACEBACK = re.compile(r"Traceback \(most recent call last\):\n(?P<frames>(?:[ \t].*\n)+)(?P<error>\S.*)")
_OUR_FRAME = re.compile(r'File "[^"]*/(api_server/[^"]+)", line (\d+), in (\w+)')


def _server_exceptions(log: str) -> tuple[Counter[str], str]:
    """The distinct exceptions in the server log (with the deepest frame of the server's own code), and the server's
    own frames of the first one."""
    found: Counter[str] = Counter()
    first = ""
    for match in _TRACEBACK.finditer(log):
        ours = _OUR_FRAME.findall(match["frames"])
        if not ours:
            continue  # the inner half of a chained exception; its outer half names our frame
        path, line, function = ours[-1]
        found[f"{path}:{line} in {function}: {match['error'][:300]}"] += 1
        if not first:
            frames = [f"  {p}:{n} in {f}" for p, n, f in ours]
            first = "\n".join([*frames, match["error"][:1000]])
    return found, first


def _failure_message(target: FuzzTarget, tally: Tally) -> str:
    lines = [f"{tally.errors} bad answers out of {tally.requests} requests ({target.backend}):"]
    for what, examples in sorted(tally.failures.items()):
        lines.append(f"\n{what}")
        lines += [f"  e.g. {example}" for example in examples]
    exceptions, first = _server_exceptions(target.server.log())
    if exceptions:
        lines.append(f"\nexceptions in the server log ({target.server.log_path}), by log entries:")
        lines += [f"  {n} x {exception}" for exception, n in exceptions.most_common()]
        lines.append(f"\nthe first one, in the server's code:\n{first}")
    return "\n".join(lines)


# --soak sends 300 requests per operation and mode: minutes, beyond the suite's default 300 s per test. Every request
# has its own timeout (a hang is counted, not waited out), so this is only a backstop.
SOAK_TIMEOUT = pytest.mark.timeout(3600)


@SOAK_TIMEOUT
def test_unsigned_and_forged_requests_are_refused_cleanly(target: FuzzTarget, soak: bool, figures: Figures) -> None:
    """No signature, or a wrong one: never a 5xx or a hang, every refusal a 4xx with a message, and no forged
    signature accepted."""
    started = time.monotonic()
    tally, operations = _fuzz(target, "unsigned", EXAMPLES_SOAK if soak else EXAMPLES_CI)
    _report(target, "unsigned/forged", tally, operations, figures, time.monotonic() - started)
    assert tally.errors == 0, _failure_message(target, tally)
    refused = sum(n for status, n in tally.by_status.items() if status == "401")
    assert refused > tally.requests // 4, f"few requests were refused as unauthenticated: {tally.by_status}"


@SOAK_TIMEOUT
def test_signed_requests_reach_the_handlers_and_fail_cleanly(target: FuzzTarget, soak: bool, figures: Figures) -> None:
    """Signed by a registered client: past authentication into validation and the services, with the same rules,
    and every 2xx answer as the schema says."""
    started = time.monotonic()
    tally, operations = _fuzz(target, "signed", EXAMPLES_SOAK if soak else EXAMPLES_CI)
    _report(target, "signed", tally, operations, figures, time.monotonic() - started)
    assert tally.errors == 0, _failure_message(target, tally)
    # Signing at send time works: the fuzzer got answers from the handlers, not only refusals.
    assert len(tally.ok_operations) >= operations // 2, (
        f"only {sorted(tally.ok_operations)} answered 2xx: {tally.by_status}"
    )
