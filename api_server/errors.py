"""Errors the API reports, each with a stable ``error_code``. Imports nothing from the package.

Every error response body is ``{"error_code": "...", "message": "..."}`` (plus ``details`` for invalid
requests, and a few named fields where an error says what to do next, such as ``owner_token_file``).
Clients branch on ``error_code``; ``message`` is for people.
"""

from __future__ import annotations


class ApiError(Exception):
    status = 400
    error_code = "invalid_request"
    headers: dict[str, str] | None = None  # extra response headers

    def __init__(self, message: str, *, error_code: str | None = None, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if error_code is not None:
            self.error_code = error_code
        # More of the answer, beside error_code and message, for clients to act on.
        self.fields = fields or {}


class InvalidRequest(ApiError):
    status = 400
    error_code = "invalid_request"


class AuthenticationFailed(ApiError):
    """401: missing_signature, malformed_signature, bad_signature, stale_timestamp, replayed_nonce."""

    status = 401
    error_code = "bad_signature"


class ClientNotRegistered(ApiError):
    status = 401
    error_code = "client_not_registered"


class Forbidden(ApiError):
    """403: not_a_member, insufficient_role, registration_disabled."""

    status = 403
    error_code = "permission_denied"


class RateLimited(ApiError):
    """429 rate_limited, with the seconds to wait in the ``Retry-After`` header."""

    status = 429
    error_code = "rate_limited"

    def __init__(self, message: str, *, retry_after_sec: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_sec)}


class NotFound(ApiError):
    """404: project_not_found, user_not_found, client_not_found, registration_not_found."""

    status = 404
    error_code = "not_found"


class Conflict(ApiError):
    status = 409
    error_code = "conflict"


class Gone(ApiError):
    status = 410
    error_code = "registration_expired"


class QuotaExceeded(ApiError):
    """403 quota_exceeded: storing the blobs would take the project over its storage quota."""

    status = 403
    error_code = "quota_exceeded"


class StoreUnavailable(ApiError):
    """503 store_unavailable: the object store could not be reached or failed a request the server made.

    Nothing is recorded before the store has done its part, so the request may be sent again, which clients
    do for a 503 whatever its method (after ``Retry-After``).
    """

    status = 503
    error_code = "store_unavailable"
    headers = {"Retry-After": "2"}  # noqa: RUF012 (never mutated)


class DatabaseUnavailable(ApiError):
    """503 database_unavailable: the database could not be reached, or stayed locked (SQLite) too long.

    The transaction was rolled back, so nothing of the request was kept and it may be sent again, which clients
    do for a 503 whatever its method (after ``Retry-After``).
    """

    status = 503
    error_code = "database_unavailable"
    headers = {"Retry-After": "2"}  # noqa: RUF012 (never mutated)
