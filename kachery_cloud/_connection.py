"""The API client for the current configuration, one per (server, identity) per process, so that keep-alive
connections are reused across calls."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .config import ClientConfig, load_config
from .errors import EphemeralModeError
from .identity import load_identity

if TYPE_CHECKING:  # requests and tenacity load on the first call, not with `import kachery_cloud`
    from .api.client import ApiClient

_clients: dict[tuple[str, str, str | None, bool], ApiClient] = {}
_lock = threading.Lock()


def api_client(config: ClientConfig | None = None) -> ApiClient:
    """Signed by this client's key (created on first need); anonymous in ephemeral mode."""
    from .api.client import ApiClient

    config = config or load_config()
    key = (config.effective_api_url, str(config.dir), config.env_client_id, config.ephemeral, config.retry_sec)
    with _lock:
        client = _clients.get(key)
        if client is None:
            identity = None if config.ephemeral else load_identity(config, create=True)
            client = ApiClient(config.effective_api_url, identity, unreachable_budget_sec=config.retry_sec)
            _clients[key] = client
        return client


def forget_clients() -> None:
    """Drop cached clients (after the key files changed, and between tests)."""
    with _lock:
        _clients.clear()


def require_writable(config: ClientConfig, what: str) -> None:
    """Refuse a write (store, set, append, ...) in ephemeral mode, saying why and what to do instead."""
    if config.ephemeral:
        raise EphemeralModeError(
            f"{what} is not allowed in ephemeral mode (KACHERY_CLOUD_EPHEMERAL is set): an ephemeral client has no "
            "identity and can only read public projects (load content, get mutables, read feeds). To write, unset "
            "KACHERY_CLOUD_EPHEMERAL and register with kachery-cloud-init; to keep content on this machine only, "
            "use the *_local functions"
        )
