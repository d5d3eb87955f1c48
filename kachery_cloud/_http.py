"""HTTP plumbing shared by the API client (layer 5) and the object-store transfers (layer 6): pooled sessions
and jittered exponential backoff. It imports requests, so modules import it when they first need it."""

from __future__ import annotations

import random
from importlib.metadata import PackageNotFoundError, version

import requests


def new_session(pool_maxsize: int) -> requests.Session:
    """A session whose keep-alive connections threads share. urllib3 never retries: callers do, since a retry
    may need a fresh signature or a fresh URL."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=pool_maxsize, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    try:
        session.headers["User-Agent"] = f"kachery-cloud/{version('kachery-cloud')}"
    except PackageNotFoundError:  # a source tree that was not installed
        session.headers["User-Agent"] = "kachery-cloud"
    return session


def backoff_seconds(attempt: int, cap: float) -> float:
    """The pause before retry number ``attempt + 1`` (attempt counts from 0): exponential from 0.25 s up to
    ``cap``, with jitter so that many clients do not retry in lockstep."""
    backoff = min(cap, 0.25 * 2**attempt)
    return random.uniform(backoff / 2, backoff)
