"""Requests to the object store through presigned URLs: one pooled session, and what a failure means.

A failed request is one of:

- transient (connection dropped, timeout, 5xx, 429/503 slow-down): try the same URL again after a pause;
- an expired or refused URL (403): ask the API server for a fresh URL, then try again;
- anything else: an error for the caller.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from .._http import backoff_seconds, new_session
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
            _session = new_session(pool_maxsize=32)
        return _session


def send_with_retries(
    method: str,
    target: Callable[[bool], tuple[str, dict[str, str]]],
    what: str,
    accept: Callable[[requests.Response], bool],
    **kwargs: Any,
) -> requests.Response:
    """Send one request until the store answers something ``accept`` takes: transient failures are retried
    after a pause, a refused URL is replaced (``target(True)`` gives a fresh one), anything else raises
    :class:`StoreRequestError`. ``target(refresh)`` gives the URL and the headers to send."""
    error: StoreRequestError | None = None
    for attempt in range(MAX_ATTEMPTS):
        url, headers = target(error is not None and error.needs_new_url)
        try:
            response = session().request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as e:
            error = connection_error(e, what)
        else:
            if accept(response):
                return response
            if response.status_code < 400:  # an answer we cannot use (a range cut short): try again
                error = StoreRequestError(f"{what}: unexpected answer HTTP {response.status_code}")
            else:
                error = error_from(response, what)
        if not (error.transient or error.needs_new_url):
            raise error
        if attempt + 1 < MAX_ATTEMPTS and not (error.needs_new_url and attempt == 0):  # a fresh URL needs no wait
            pause(attempt)
    assert error is not None
    raise error


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
    time.sleep(backoff_seconds(attempt, _MAX_BACKOFF_SEC))


def _xml_field(text: str, name: str) -> str:
    match = re.search(rf"<{name}>([^<]*)</{name}>", text)
    return match.group(1) if match else ""
