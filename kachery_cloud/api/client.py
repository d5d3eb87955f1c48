"""Layer 5: the one HTTP client of the API server. Signs every request, puts a timeout on every call, retries
what is safe to retry, and turns error responses into :mod:`kachery_cloud.errors` classes.

Retry policy (exponential backoff with jitter, at most ``max_attempts`` tries):

- a connection that could not be made, 429 and 503: always retried (the server did not act on the request);
  429/503 wait at least the server's ``Retry-After``;
- other 5xx, read timeouts and connections dropped mid-request: retried only for idempotent calls, since the
  server may have acted on the first attempt.

A server that cannot be reached at all (connection refused, or dropped for an idempotent call) is tried
for ``unreachable_budget_sec`` (20 s; ``KACHERY_CLOUD_RETRY_SEC``): long enough to ride out a restart.

Each attempt is signed afresh (new timestamp and nonce): resending the same signature would be refused as a
replay. Signatures name the server they are for (its id, from ``GET /api/health``, asked once per client):
a server given a request signed for another refuses it (``wrong_server``), after which the id is asked for
again and the request signed anew, once (a server whose database was replaced has a new id).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import requests
import tenacity

from .._http import backoff_seconds, new_session
from ..config import DEFAULT_RETRY_SEC
from ..errors import (
    AuthenticationError,
    NotRegisteredError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    ServerError,
    ServerUnreachableError,
    VersionConflictError,
)
from ..identity import ClientIdentity
from ..protocol.request_signing import SERVER_ID_RE

DEFAULT_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_UNREACHABLE_BUDGET_SEC = DEFAULT_RETRY_SEC  # one default, set by KACHERY_CLOUD_RETRY_SEC
_MAX_BACKOFF_SEC = 20.0
_MAX_RETRY_AFTER_SEC = 120.0

_ERROR_CLASSES: dict[str, type[ServerError]] = {
    "missing_signature": AuthenticationError,
    "malformed_signature": AuthenticationError,
    "bad_signature": AuthenticationError,
    "stale_timestamp": AuthenticationError,
    "replayed_nonce": AuthenticationError,
    "wrong_server": AuthenticationError,
    "upgrade_required": AuthenticationError,
    "client_not_registered": NotRegisteredError,
    "not_a_member": PermissionDeniedError,
    "insufficient_role": PermissionDeniedError,
    "permission_denied": PermissionDeniedError,
    "registration_disabled": PermissionDeniedError,
    "rate_limited": RateLimitedError,
    "quota_exceeded": QuotaExceededError,
    "version_conflict": VersionConflictError,
}


class _RetryableFailure(Exception):
    """One failed attempt that may be retried; ``final`` is what the caller gets if no attempt succeeds."""

    def __init__(self, final: Exception, retry_after: float | None = None, *, unreachable: bool = False) -> None:
        super().__init__(str(final))
        self.final = final
        self.retry_after = retry_after
        self.unreachable = unreachable


class ApiClient:
    """Calls to one API server, signed by ``identity`` (None: anonymous, for public reads)."""

    def __init__(
        self,
        base_url: str,
        identity: ClientIdentity | None,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        unreachable_budget_sec: float = DEFAULT_UNREACHABLE_BUDGET_SEC,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.session = new_session(pool_maxsize=16)
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.unreachable_budget_sec = unreachable_budget_sec
        self._server_id: str | None = None
        self._server_id_lock = threading.Lock()

    def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool | None = None,
        timeout: tuple[float, float] | None = None,
    ) -> Any:
        """Send one API request and return its decoded JSON body (None for an empty body)."""
        method = method.upper()
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE")
        body = b"" if json_body is None else json.dumps(json_body, separators=(",", ":")).encode("utf-8")
        signed = self.identity is not None
        try:
            return self._call(method, path, body, params, idempotent, timeout, signed)
        except AuthenticationError as e:
            if e.error_code != "wrong_server" or not signed:
                raise
            # The server at this address is not the one the id was asked of (a new database, a new server):
            # nothing was done with the request; ask for the id again and sign for it.
            with self._server_id_lock:
                self._server_id = None
            return self._call(method, path, body, params, idempotent, timeout, signed)

    def server_id(self) -> str:
        """The id of the server at ``base_url``, which signed requests name (asked once, unsigned)."""
        with self._server_id_lock:
            if self._server_id is None:
                health = self._call("GET", "/api/health", b"", None, True, None, False)
                found = health.get("server_id") if isinstance(health, dict) else None
                if not isinstance(found, str) or not SERVER_ID_RE.match(found):
                    raise ServerError(
                        f"the server at {self.base_url} does not say which server it is (no server_id in "
                        "/api/health): it is an older kachery-cloud-server, which this client cannot sign requests "
                        "for; upgrade the server",
                        error_code="server_too_old",
                    )
                self._server_id = found
            return self._server_id

    def _call(
        self,
        method: str,
        path: str,
        body: bytes,
        params: Mapping[str, Any] | None,
        idempotent: bool,
        timeout: tuple[float, float] | None,
        signed: bool,
    ) -> Any:
        retrying = tenacity.Retrying(
            stop=self._should_stop,
            wait=_wait_backoff_or_retry_after,
            retry=tenacity.retry_if_exception_type(_RetryableFailure),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._attempt(method, path, body, params, idempotent, timeout or self.timeout, signed)
        except _RetryableFailure as failure:
            raise failure.final from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _should_stop(self, retry_state: tenacity.RetryCallState) -> bool:
        # A server that cannot be reached is tried for unreachable_budget_sec (a restart takes seconds, and
        # KACHERY_CLOUD_RETRY_SEC lets CI fail fast); any other retryable failure max_attempts times.
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None else None
        if isinstance(failure, _RetryableFailure) and failure.unreachable:
            return (retry_state.seconds_since_start or 0.0) >= self.unreachable_budget_sec
        return retry_state.attempt_number >= self.max_attempts

    def _attempt(
        self,
        method: str,
        path: str,
        body: bytes,
        params: Mapping[str, Any] | None,
        idempotent: bool,
        timeout: tuple[float, float],
        signed: bool,
    ) -> Any:
        url = f"{self.base_url}{path}"
        headers = {"Content-Type": "application/json"} if body else {}
        prepared = self.session.prepare_request(
            requests.Request(method, url, data=body, headers=headers, params=params)
        )
        if signed and self.identity is not None:
            # Sign the target exactly as it will be sent (requests has encoded the query by now).
            server = self.server_id()
            prepared.headers.update(self.identity.signed_headers(method, prepared.path_url, body, server))
        try:
            # No redirects: they would carry the signed headers elsewhere or turn a POST into a GET.
            response = self.session.send(prepared, timeout=timeout, allow_redirects=False)
        except requests.exceptions.ConnectionError as e:
            unreachable = ServerUnreachableError(
                f"cannot reach the kachery-cloud API server at {self.base_url} ({_reason(e)}); is it running? "
                "Set KACHERY_CLOUD_API_URL or api_url in config.yaml to use another one"
            )
            if _never_sent(e) or idempotent:
                raise _RetryableFailure(unreachable, unreachable=True) from e
            raise unreachable from None
        except requests.exceptions.Timeout as e:
            final = ServerUnreachableError(f"the API server at {self.base_url} did not answer {method} {path} in time")
            if idempotent:
                raise _RetryableFailure(final) from e
            raise final from None
        if 300 <= response.status_code < 400:
            raise ServerError(
                f"{method} {path}: the server at {self.base_url} redirects to {response.headers.get('Location')}; "
                "set KACHERY_CLOUD_API_URL to the final address",
                error_code="redirect",
                status=response.status_code,
            )
        if response.status_code < 400:
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise ServerError(
                    f"{method} {path}: the server at {self.base_url} did not answer JSON",
                    error_code="bad_response",
                    status=response.status_code,
                ) from None
        error = self._error_from(response, method, path)
        status = response.status_code
        if status in (429, 503) or (status >= 500 and idempotent):
            retry_after = _retry_after(response)
            if retry_after is not None and retry_after > _MAX_RETRY_AFTER_SEC:
                # Told to come back in many minutes (e.g. too many pending registrations): say so now rather
                # than block for that long.
                error.args = (f"{error} (the server asks to try again in {retry_after / 60:.0f} minutes)",)
                raise error
            raise _RetryableFailure(error, retry_after=retry_after)
        raise error

    def _error_from(self, response: requests.Response, method: str, path: str) -> ServerError:
        code, message, fields = "http_error", "", {}
        try:
            body = response.json()
            code = str(body.get("error_code") or code)
            message = str(body.get("message") or "")
            fields = {k: v for k, v in body.items() if k not in ("error_code", "message") and isinstance(v, str)}
        except (ValueError, AttributeError):
            message = response.text[:200].strip()
        message = message or f"HTTP {response.status_code}"
        # Any other refusal (403) is a permission error too, whatever its code.
        cls = _ERROR_CLASSES.get(code) or (PermissionDeniedError if response.status_code == 403 else ServerError)
        if cls is NotRegisteredError:
            client = self.identity.client_id if self.identity else "(none)"
            message = (
                f"this client ({client}) is not registered with the kachery-cloud server at {self.base_url}; "
                "run `kachery-cloud-init` (or kcl.init() in a notebook) to register it"
            )
        elif code == "stale_timestamp":
            message = f"{message} (the server at {self.base_url} refused the request)"
        elif cls is ServerError and response.status_code >= 500:
            message = f"{method} {path} failed on the server at {self.base_url}: {message}"
        return cls(message, error_code=code, status=response.status_code, fields=fields)


def _wait_backoff_or_retry_after(retry_state: tenacity.RetryCallState) -> float:
    wait = backoff_seconds(retry_state.attempt_number - 1, _MAX_BACKOFF_SEC)
    outcome = retry_state.outcome
    failure = outcome.exception() if outcome is not None else None
    if isinstance(failure, _RetryableFailure) and failure.retry_after is not None:
        wait = max(wait, failure.retry_after)
    return wait


def _retry_after(response: requests.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        value = float(raw)
        return max(0.0, value) if value == value else None  # nan: not a number of seconds
    except ValueError:
        return None  # the HTTP-date form is not used by our server


def _never_sent(e: requests.exceptions.ConnectionError) -> bool:
    """Whether the connection failed before the request could reach the server (safe to send again)."""
    import urllib3.exceptions

    if isinstance(e, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(e.args[0], "reason", None) if e.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.NameResolutionError)


def _reason(e: Exception) -> str:
    text = str(e)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if marker in text:
            return marker.lower()
    return type(e).__name__
