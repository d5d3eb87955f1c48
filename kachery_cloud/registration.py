"""Layer 7: registering this client with the API server (``kachery-cloud-init`` / ``kcl.init()``) and what
the client knows about itself.

Three ways in:

- the server's owner, on the server's machine: init reads the owner-token file the server names (only the Unix
  user who runs the server can) and is linked to the owner at once;
- an invitation link from an admin (``kachery-cloud-server admin invite``): ``init(invite=LINK)`` registers the
  client as the invitation's user, with its role in its project, and points this client directory at that
  server;
- Google sign-in on a hosted server: init prints a link, the person signs in on the server's page, and init
  polls until the server has linked the client, so it needs no Enter key and works in Jupyter and Colab.
"""

from __future__ import annotations

import dataclasses
import getpass
import html
import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._notebook import in_notebook
from .config import DEFAULT_API_URL, ENV_API_URL, check_api_url_can_be_saved, load_config, save_api_url
from .errors import ConfigError, NotRegisteredError, ServerError
from .identity import load_identity
from .protocol.hosts import is_loopback_url
from .protocol.owner_proof import owner_proof

REGISTRATION_TIMEOUT_SEC = 15 * 60
OWNER_TOKEN_FILE = "owner-token"  # named by the server (api_server/owner_proof.py)
_OWNER_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{40,100}")
INVITE_PATH_PART = "/invite/"
_INVITE_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{20,64}")


def init(
    label: str | None = None,
    *,
    quiet: bool = False,
    timeout_sec: float = REGISTRATION_TIMEOUT_SEC,
    invite: str | None = None,
) -> dict:
    """Register this client with the API server (once per ``KACHERY_CLOUD_DIR``) and return its info.

    Creates the client's key pair on first use. Already registered: returns at once. With ``invite`` (a link
    from ``kachery-cloud-server admin invite``): joins that server's project with the link's role, and points
    this client directory at that server. The returned dict has ``client_id``, ``user``, ``default_project_id``,
    ``projects`` and ``server_url``.

    Example::

        import kachery_cloud as kcl
        kcl.init()
        kcl.init(invite="http://lab-server:7733/invite/...")
    """
    from ._connection import api_client, forget_clients

    config = load_config()
    if config.ephemeral:
        raise ConfigError("ephemeral mode (KACHERY_CLOUD_EPHEMERAL) has no client identity to register; unset it")
    label = label or _default_label()
    if invite is not None:
        info = _accept_invitation(config, invite, label, quiet=quiet)
    else:
        forget_clients()
        client = api_client(config)
        try:
            info = client.call("GET", "/api/clients/me")
        except NotRegisteredError:
            info = _register(client, label, quiet=quiet, timeout_sec=timeout_sec)
    if not quiet:
        print(_describe(info))
    return info


def _register(client: Any, label: str, *, quiet: bool, timeout_sec: float) -> dict:
    try:
        answer = client.call("POST", "/api/clients/register", json_body={"label": label})
    except ServerError as e:
        if e.error_code != "owner_proof_required":
            raise
        answer = _register_as_owner(client, label, e.fields.get("owner_token_file"), refusal=e)
    if answer["status"] == "registered":
        return answer["client"]
    _show_link(answer, quiet=quiet)
    _wait_until_linked(client, answer, timeout_sec=min(timeout_sec, _seconds_left(answer)))
    return client.call("GET", "/api/clients/me")


def _register_as_owner(client: Any, label: str, token_file: str | None, *, refusal: ServerError) -> dict:
    # Only a server on this machine can be its owner's: another has no business naming a file here.
    local = is_loopback_url(client.base_url)
    token = _read_owner_token(token_file) if token_file and local else None
    if token is None:
        raise NotRegisteredError(
            f"the kachery-cloud server at {client.base_url} registers without an invitation only the Unix user who "
            f"runs it, and you ({_login_name()}) are not that user. Ask its admin for an invitation "
            "(kachery-cloud-server admin invite PROJECT --role write), then run: kachery-cloud-init --invite LINK",
            error_code="owner_proof_required",
            status=refusal.status,
        ) from None
    proof = owner_proof(token, client.server_id(), client.identity.client_id)
    return client.call("POST", "/api/clients/register", json_body={"label": label, "owner_proof": proof})


def _read_owner_token(path_text: str) -> str | None:
    """The token in the server's owner-token file, if this user can read it; None otherwise. The server names
    the file, so only a file that looks like one is read (named owner-token, this user's, private, one token):
    a fake server on this machine cannot make init send it the contents of another file."""
    path = Path(path_text)
    if path.name != OWNER_TOKEN_FILE or not path.is_absolute():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            return None
        token = f.read(200).decode("ascii", "replace").strip()
    return token if _OWNER_TOKEN_RE.fullmatch(token) else None


def _accept_invitation(config: Any, link: str, label: str, *, quiet: bool) -> dict:
    from ._connection import api_client, forget_clients

    server_url, token = parse_invitation_link(link)
    if config.api_url and config.api_url.rstrip("/") != server_url:
        source = "KACHERY_CLOUD_API_URL" if os.environ.get(ENV_API_URL, "").strip() else f"{config.dir}/config.yaml"
        raise ConfigError(
            f"this invitation is for the server at {server_url}, but this client uses {config.api_url} ({source}); "
            "use another KACHERY_CLOUD_DIR for the second server, or change that setting"
        )
    will_save = config.api_url is None and server_url != DEFAULT_API_URL
    if will_save:
        check_api_url_can_be_saved(config, server_url)  # before the link is used up
    forget_clients()
    client = api_client(dataclasses.replace(config, api_url=server_url))
    answer = client.call(
        "POST",
        "/api/invitations/accept",
        json_body={"token": token, "label": label, "user_name": _login_name()},
    )
    # Only now: a link that was refused leaves this directory pointed where it was.
    if will_save:
        save_api_url(config, server_url)
    forget_clients()
    if not quiet:
        if answer["role"] is None:  # a link for one more machine of an account, which gives no role
            print(f"Linked this machine to {answer['client']['user']}")
        else:
            print(f"Joined project {answer['project_id']} as {answer['client']['user']} (role {answer['role']})")
    return answer["client"]


def parse_invitation_link(link: str) -> tuple[str, str]:
    """``http://host:7733/invite/<secret>`` → (``http://host:7733``, ``<secret>``)."""
    text = link.strip()
    parts = urlsplit(text)
    base, sep, token = parts.path.rpartition(INVITE_PATH_PART)
    if parts.scheme not in ("http", "https") or not parts.netloc or not sep or not _INVITE_TOKEN_RE.fullmatch(token):
        raise ConfigError(
            f"{text[:200]!r} is not an invitation link; it looks like http://<server>/invite/<code>, as printed by "
            "kachery-cloud-server admin invite"
        )
    return f"{parts.scheme}://{parts.netloc}{base}".rstrip("/"), token


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
    return f"{_login_name()}@{socket.gethostname()}"[:255]


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"


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
