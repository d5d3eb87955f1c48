"""Requests to the object store through presigned URLs: one pooled session, and what a failure means.

A failed request is one of:

- transient (connection dropped, timeout, 5xx, 429/503 slow-down): try the same URL again after a pause;
- an expired or refused URL (403): ask the API server for a fresh URL, then try again;
- anything else: an error for the caller.
"""

from __future__ import annotations

import random
import re
import threading
import time

import requests

from ..errors import KacheryCloudError

TIMEOUT = (10.0, 120.0)  # (connect, read) seconds
MAX_ATTEMPTS = 6
_MAX_BACKOFF_SEC = 15.0

_session: requests.Session | None = None
_session_lock = threading.Lock()


class StoreRequestError(KacheryCloudError):
    """The object store refused or failed a request; ``status`` 0 means no HTTP answer arrived."""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def transient(self) -> bool:
        return self.status == 0 or self.status >= 500 or self.status == 429 or self.code == "SlowDown"

    @property
    def needs_new_url(self) -> bool:
        return self.status == 403


def session() -> requests.Session:
    """The process-wide session for the object store (keep-alive connections shared by all threads)."""
    global _session
    with _session_lock:
        if _session is None:
            _session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=32, max_retries=0)
            _session.mount("http://", adapter)
            _session.mount("https://", adapter)
        return _session


def error_from(response: requests.Response, what: str) -> StoreRequestError:
    text = response.text[:2000] if response.content else ""
    code = _xml_field(text, "Code")
    message = _xml_field(text, "Message") or text[:200] or response.reason
    return StoreRequestError(
        f"{what}: the object store answered HTTP {response.status_code} {code} {message}".rstrip(),
        status=response.status_code,
        code=code,
    )


def connection_error(e: Exception, what: str) -> StoreRequestError:
    return StoreRequestError(f"{what}: the object store could not be reached ({type(e).__name__})")


def pause(attempt: int) -> None:
    """Back off before attempt ``attempt + 1`` (exponential, with jitter so clients do not retry in step)."""
    backoff = min(_MAX_BACKOFF_SEC, 0.25 * 2**attempt)
    time.sleep(random.uniform(backoff / 2, backoff))


def redact(url: str) -> str:
    """A URL without its query string (which carries the signature), for messages."""
    return url.split("?", 1)[0]


def _xml_field(text: str, name: str) -> str:
    match = re.search(rf"<{name}>([^<]*)</{name}>", text)
    return match.group(1) if match else ""
