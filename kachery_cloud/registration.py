"""Layer 7: registering this client with the API server (``kachery-cloud-init`` / ``kcl.init()``) and what
the client knows about itself.

On the embedded server (local mode) registration is immediate. On a hosted server (Google mode) init prints a
link, the person signs in on the server's page, and init polls until the server has linked the client, so it
needs no Enter key and works in Jupyter and Colab.
"""

from __future__ import annotations

import getpass
import html
import socket
import time
from typing import Any

from ._notebook import in_notebook
from .config import load_config
from .errors import ConfigError, NotRegisteredError, ServerError
from .identity import load_identity

REGISTRATION_TIMEOUT_SEC = 15 * 60


def init(label: str | None = None, *, quiet: bool = False, timeout_sec: float = REGISTRATION_TIMEOUT_SEC) -> dict:
    """Register this client with the API server (once per ``KACHERY_CLOUD_DIR``) and return its info.

    Creates the client's key pair on first use. Already registered: returns at once. The returned dict
    has ``client_id``, ``user``, ``default_project_id``, ``projects`` and ``server_url``.

    Example::

        import kachery_cloud as kcl
        kcl.init()
    """
    from ._connection import api_client, forget_clients

    config = load_config()
    if config.ephemeral:
        raise ConfigError("ephemeral mode (KACHERY_CLOUD_EPHEMERAL) has no client identity to register; unset it")
    forget_clients()
    client = api_client(config)
    try:
        info = client.call("GET", "/api/clients/me")
    except NotRegisteredError:
        answer = client.call("POST", "/api/clients/register", json_body={"label": label or _default_label()})
        if answer["status"] == "registered":
            info = answer["client"]
        else:
            _show_link(answer, quiet=quiet)
            _wait_until_linked(client, answer, timeout_sec=min(timeout_sec, _seconds_left(answer)))
            info = client.call("GET", "/api/clients/me")
    if not quiet:
        print(_describe(info))
    return info


def get_client_id() -> str:
    """This client's id (hex Ed25519 public key); creates the key pair on first use. No network."""
    identity = load_identity(load_config(), create=True)
    assert identity is not None
    return identity.client_id


def get_client_info() -> dict:
    """What the server knows about this client: user, default project, project memberships."""
    from ._connection import api_client

    return api_client().call("GET", "/api/clients/me")


def get_project_id() -> str:
    """The project stores go to: ``KACHERY_CLOUD_PROJECT`` (or ``project`` in config.yaml), else the client's
    default project on the server."""
    config = load_config()
    if config.project:
        return config.project
    project = get_client_info().get("default_project_id")
    if not project:
        raise ConfigError(
            "this client's user has no default project on the server; set KACHERY_CLOUD_PROJECT or ask a "
            "server admin to add you to a project"
        )
    return project


def _default_label() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    return f"{user}@{socket.gethostname()}"[:255]


def _show_link(answer: dict[str, Any], *, quiet: bool) -> None:
    url = str(answer["registration_url"])
    if not url.startswith(("https://", "http://")):
        raise ServerError(f"the server sent an unusable registration link {url[:100]!r}", error_code="bad_response")
    lines = [
        "To register this client, open this link, sign in, and enter this code:",
        f"  {url}",
        f"  code: {answer['verification_code']}",
        "Waiting for the registration to complete (Ctrl-C to stop)...",
    ]
    if in_notebook():
        from IPython.display import HTML, display

        link = html.escape(url, quote=True)
        display(HTML(f'<a href="{link}" target="_blank" rel="noopener">Register this kachery-cloud client</a>'))
    # The link and code are printed even when quiet: without them nobody can complete the registration.
    print("\n".join(lines if not quiet else lines[1:3]), flush=True)


def _wait_until_linked(client: Any, answer: dict[str, Any], *, timeout_sec: float) -> None:
    deadline = time.monotonic() + timeout_sec
    interval = float(answer.get("poll_interval_sec") or 2.0)
    path = f"/api/registrations/{answer['registration_id']}"
    while True:
        state = client.call("GET", path)["status"]
        if state == "registered":
            return
        if state == "expired" or time.monotonic() >= deadline:
            raise NotRegisteredError(
                "the registration link expired before anyone signed in; run kachery-cloud-init again",
                error_code="registration_expired",
                status=410,
            )
        time.sleep(interval)


def _seconds_left(answer: dict[str, Any]) -> float:
    expires = answer.get("expires_at_ms")
    return REGISTRATION_TIMEOUT_SEC if expires is None else max(1.0, expires / 1000 - time.time())


def _describe(info: dict[str, Any]) -> str:
    projects = ", ".join(f"{p['project_id']} ({p['role']})" for p in info.get("projects", [])) or "none"
    return "\n".join(
        [
            f"Client id: {info['client_id']}",
            f"Owner: {info['user']}",
            f"Default project: {info.get('default_project_id') or '(none)'}",
            f"Projects: {projects}",
            f"Server: {info['server_url']}",
        ]
    )
