"""``kachery-cloud-server``: start/stop/status of the server and the ``admin`` commands (which work on the
database directly, beside a running server or without one)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click
from sqlalchemy.orm import Session

from .errors import ApiError
from .settings import DEFAULT_PORT, load_settings

F = TypeVar("F", bound=Callable[..., Any])


class _Size(click.ParamType):
    """Bytes, with an optional suffix (``1K``, ``500M``, ``10G``; powers of 1024); ``none`` for no limit."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        from .settings import parse_size

        if isinstance(value, int) or value is None:
            return value
        if str(value).strip().lower() in ("none", "unlimited"):
            return None
        try:
            return parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


class _Duration(click.ParamType):
    """Seconds, or a number with s, m, h, d or w (``90m``, ``7d``)."""

    name = "duration"
    _UNITS: ClassVar[dict[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        unit = self._UNITS.get(text[-1:]) if text else None
        number = text[:-1] if unit else text
        try:
            seconds = float(number) * (unit or 1)
        except ValueError:
            seconds = -1
        if not seconds > 0:
            self.fail(f"{value!r} is not a duration (like 3600, 90m, 12h or 7d)", param, ctx)
        return int(seconds)


SIZE = _Size()
DURATION = _Duration()


def _settings_options(command: F) -> F:
    command = click.option(
        "--settings",
        "settings_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="YAML settings file (default: <data dir>/settings.yaml if it exists).",
    )(command)
    command = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Server data directory [default: ~/.kachery-cloud-server, env KACHERY_CLOUD_SERVER_DATA_DIR].",
    )(command)
    return command


def _fail_cleanly(command: F) -> F:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        from .embedded import EmbeddedStoreError
        from .runner import ServerStartError

        try:
            return command(*args, **kwargs)
        except ApiError as e:
            raise click.ClickException(e.message) from None
        except (ServerStartError, EmbeddedStoreError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None
        except ValidationError as e:
            # Only where and what: pydantic's own text repeats the input, which may be a password or secret.
            problems = "\n".join(
                f"  {'.'.join(str(p) for p in err['loc']) or '(settings)'}: {err['msg']}" for err in e.errors()
            )
            raise click.ClickException(f"invalid settings:\n{problems}") from None

    return wrapper  # type: ignore[return-value]


@click.group()
@click.version_option(package_name="kachery-cloud")
def main() -> None:
    """The kachery-cloud project API server."""
    import os

    # The database and logs hold private data: whatever this creates (the admin commands included) is this
    # user's alone.
    os.umask(0o077)


@main.command()
@_settings_options
@click.option("--host", help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=int, help=f"Port to listen on [default: {DEFAULT_PORT}].")
@click.option(
    "--public-url",
    help="The URL clients on other machines use (http://<this host>:<port>, or a proxy's) [default: from --host].",
)
@click.option(
    "--store-port",
    type=int,
    help="Port of the embedded store [default: --port + 1 with a --host other than loopback, else any free one].",
)
@click.option(
    "--background", is_flag=True, help="Detach, return once the server answers; log to <data dir>/server.log."
)
@_fail_cleanly
def start(
    data_dir: Path | None,
    settings_file: Path | None,
    host: str | None,
    port: int | None,
    public_url: str | None,
    store_port: int | None,
    background: bool,
) -> None:
    """Start the server; without an s3 section in the settings, with an embedded nanio store and SQLite.

    The first start creates the data directory, the bucket, the database, a local owner user and a project
    named 'default'; later starts reuse them. To serve other machines:
    --host 0.0.0.0 --public-url http://<this host>:7733 (the embedded store then listens on port 7734 too).
    """
    from . import runner

    settings = load_settings(
        settings_file, data_dir=data_dir, host=host, port=port, public_url=public_url, store_port=store_port
    )
    if not background:
        runner.run_foreground(settings)
        return
    running = runner.read_pid_file(settings.resolved_data_dir)
    if running is not None:
        # Re-running a setup script should not fail because the server is already up.
        click.echo(f"kachery-cloud-server is already running at {_where(running, settings.resolved_data_dir)}")
        return
    argv = [sys.executable, "-m", "api_server.cli", "start", "--data-dir", str(settings.resolved_data_dir)]
    if settings_file is not None:
        argv += ["--settings", str(settings_file.absolute())]
    argv += ["--host", settings.host, "--port", str(settings.port)]
    if public_url:
        argv += ["--public-url", public_url]
    if store_port:
        argv += ["--store-port", str(store_port)]
    info = runner.start_background(settings, argv)
    click.echo(
        f"kachery-cloud-server running at {_where(info, settings.resolved_data_dir)}; stop it with: "
        f"kachery-cloud-server stop{_data_dir_option(settings.resolved_data_dir)}"
    )


def _where(info: dict[str, Any], data_dir: Path) -> str:
    """``http://127.0.0.1:7733 (pid 12), data in /srv/kc``: this process's own URL (not a balancer's), its pid
    and data directory, and the public URL where that differs."""
    public = info.get("public_url")
    shown = f"{info['url']} (pid {info['pid']})"
    if public and public != info["url"]:
        shown += f", public URL {public}"
    if info.get("store_url"):
        shown += f", embedded store for clients at {info['store_url']}"
    return f"{shown}, data in {info.get('data_dir') or data_dir}"


def _data_dir_option(data_dir: Path) -> str:
    from .settings import DEFAULT_DATA_DIR

    default = Path(DEFAULT_DATA_DIR).expanduser().absolute()
    return "" if data_dir == default else f" --data-dir {data_dir}"


@main.command()
@_settings_options
@_fail_cleanly
def stop(data_dir: Path | None, settings_file: Path | None) -> None:
    """Stop the server that uses the data directory (SIGTERM, then wait)."""
    from . import runner

    settings = load_settings(settings_file, data_dir=data_dir)
    stopped = runner.stop(settings.resolved_data_dir)
    click.echo(
        f"stopped the server at {_where(stopped, settings.resolved_data_dir)}"
        if stopped
        else f"no server is running on {settings.resolved_data_dir}"
    )


@main.command()
@_settings_options
@_fail_cleanly
def status(data_dir: Path | None, settings_file: Path | None) -> None:
    """Say whether a server runs on the data directory; exit 1 if not."""
    from . import runner

    settings = load_settings(settings_file, data_dir=data_dir)
    running = runner.read_pid_file(settings.resolved_data_dir)
    if running is None:
        click.echo(f"no server is running on {settings.resolved_data_dir}")
        sys.exit(1)
    click.echo(f"running at {_where(running, settings.resolved_data_dir)}")


# --- admin ---


@main.group()
def admin() -> None:
    """Manage users, clients, projects and memberships (directly in the database)."""


@contextmanager
def _database(data_dir: Path | None, settings_file: Path | None) -> Iterator[Session]:
    from .db.session import Database

    settings = load_settings(settings_file, data_dir=data_dir)
    db = Database(settings.resolved_database_url)
    try:
        db.upgrade()
        with db.transaction() as session:
            yield session
    finally:
        db.dispose()


def _admin_command(name: str) -> Callable[[F], F]:
    def decorate(command: F) -> F:
        return admin.command(name)(_settings_options(_fail_cleanly(command)))  # type: ignore[return-value]

    return decorate


def _owner_or_user(session: Session, user: str | None) -> Any:
    from .services import identity

    return identity.find_user(session, user) if user else identity.ensure_local_owner(session)


@_admin_command("create-project")
@click.argument("project_id")
@click.option("--label", default="", help="Human-readable name.")
@click.option("--owner", help="Owner (user name or email) [default: the local owner].")
@click.option("--public", is_flag=True, help="Anyone may read (ephemeral clients included).")
@click.option(
    "--quota", "quota_bytes", type=SIZE, help="Storage quota: bytes, or with K, M, G, T (1024s) [default: unlimited]."
)
def create_project(
    data_dir: Path | None,
    settings_file: Path | None,
    project_id: str,
    label: str,
    owner: str | None,
    public: bool,
    quota_bytes: int | None,
) -> None:
    """Create a project; its owner becomes its admin."""
    from .services import projects

    with _database(data_dir, settings_file) as session:
        owner_user = _owner_or_user(session, owner)
        project = projects.create_project(
            session,
            owner=owner_user,
            project_id=project_id,
            label=label,
            public_read=public,
            storage_quota_bytes=quota_bytes,
        )
        click.echo(f"created project {project.id} (owner {owner_user.name})")


@_admin_command("add-member")
@click.argument("project_id")
@click.argument("user")
@click.option("--role", type=click.Choice(["read", "write", "admin"]), default="read", show_default=True)
def add_member(data_dir: Path | None, settings_file: Path | None, project_id: str, user: str, role: str) -> None:
    """Give USER (a user name, or an email for someone who will sign in with Google) ROLE in a project."""
    from .services import identity, projects

    with _database(data_dir, settings_file) as session:
        try:
            member = identity.find_user(session, user)
        except ApiError:
            member = identity.find_or_add_user_by_email(session, user)
        projects.set_member(session, project_id, member, role)
        click.echo(f"{member.name} has role {role} in project {project_id}")


@_admin_command("remove-member")
@click.argument("project_id")
@click.argument("user")
def remove_member(data_dir: Path | None, settings_file: Path | None, project_id: str, user: str) -> None:
    """Remove USER from a project."""
    from .services import identity, projects

    with _database(data_dir, settings_file) as session:
        member = identity.find_user(session, user)
        removed = projects.remove_member(session, project_id, member)
        click.echo(f"removed {member.name} from {project_id}" if removed else f"{member.name} was not a member")


@_admin_command("set-public")
@click.argument("project_id")
@click.argument("public", type=click.BOOL)
def set_public(data_dir: Path | None, settings_file: Path | None, project_id: str, public: bool) -> None:
    """Make a project readable by anyone (PUBLIC true) or by members only (false)."""
    from .services import projects

    with _database(data_dir, settings_file) as session:
        projects.set_public_read(session, project_id, public)
        click.echo(f"project {project_id} is {'public' if public else 'private'}")


@_admin_command("set-quota")
@click.argument("project_id")
@click.argument("quota_bytes", metavar="QUOTA", type=SIZE)
def set_quota(data_dir: Path | None, settings_file: Path | None, project_id: str, quota_bytes: int | None) -> None:
    """Set a project's storage quota: QUOTA bytes (suffixes K, M, G, T as powers of 1024) or "none"."""
    from .services import projects

    with _database(data_dir, settings_file) as session:
        projects.get_project(session, project_id).storage_quota_bytes = quota_bytes
        click.echo(f"project {project_id}: quota {'unlimited' if quota_bytes is None else f'{quota_bytes} bytes'}")


@_admin_command("set-task-request-role")
@click.argument("project_id")
@click.argument("role", type=click.Choice(["read", "write"]))
def set_task_request_role(data_dir: Path | None, settings_file: Path | None, project_id: str, role: str) -> None:
    """Who may request new tasks: clients with ROLE "write" (the default) or anyone who may read the project
    ("read"; on a public project, any registered client). Running tasks always needs write."""
    from .services import projects

    with _database(data_dir, settings_file) as session:
        projects.get_project(session, project_id).task_request_role = role
        click.echo(f"project {project_id}: requesting tasks needs the {role} role")


@_admin_command("usage")
@click.argument("project_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def usage(data_dir: Path | None, settings_file: Path | None, project_id: str, as_json: bool) -> None:
    """Requests and bytes in/out of a project per UTC day, and what it stores now."""
    from .services import projects
    from .services.blobs import stored_totals
    from .services.usage import stored_by_kind, usage_of

    with _database(data_dir, settings_file) as session:
        project = projects.get_project(session, project_id)
        count, _blob_bytes = stored_totals(session, project_id)
        report = {
            "project_id": project_id,
            "blobs": count,
            # Everything the project keeps (what its quota limits), and that by kind.
            "stored_bytes": project.stored_bytes,
            "stored_bytes_by_kind": stored_by_kind(session, project_id),
            "storage_quota_bytes": project.storage_quota_bytes,
            "days": usage_of(session, project_id),
        }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    quota = report["storage_quota_bytes"]
    kinds = ", ".join(f"{kind.replace('_', ' ')} {size}" for kind, size in report["stored_bytes_by_kind"].items())
    click.echo(
        f"{project_id}: {report['blobs']} blobs, {report['stored_bytes']} bytes stored ({kinds}), "
        f"quota {'unlimited' if quota is None else quota}"
    )
    for day in report["days"]:
        click.echo(f"{day['day']}\trequests {day['requests']}\tin {day['bytes_in']}\tout {day['bytes_out']}")


@_admin_command("list-projects")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_projects(data_dir: Path | None, settings_file: Path | None, as_json: bool) -> None:
    """List every project with owner, visibility, quota and members."""
    from sqlalchemy import select

    from .db.models import Membership, User
    from .services import projects

    with _database(data_dir, settings_file) as session:
        rows = []
        for project in projects.all_projects(session):
            members = session.execute(
                select(User.name, Membership.role).join(Membership).where(Membership.project_id == project.id)
            ).all()
            owner = session.get(User, project.owner_user_id)
            rows.append(
                {
                    "project_id": project.id,
                    "label": project.label,
                    "owner": owner.name if owner else None,
                    "public_read": project.public_read,
                    "storage_quota_bytes": project.storage_quota_bytes,
                    "members": {name: role for name, role in members},
                }
            )
    _print_rows(rows, as_json, _project_line)


def _project_line(row: dict[str, Any]) -> str:
    members = ", ".join(f"{n} ({r})" for n, r in sorted(row["members"].items()))
    visibility = "public" if row["public_read"] else "private"
    quota = row["storage_quota_bytes"] if row["storage_quota_bytes"] is not None else "unlimited"
    return f"{row['project_id']}\t{visibility}\towner {row['owner']}\tquota {quota}\tmembers: {members}"


@_admin_command("list-clients")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_clients(data_dir: Path | None, settings_file: Path | None, as_json: bool) -> None:
    """List registered clients with their users and labels."""
    from .services import identity

    with _database(data_dir, settings_file) as session:
        rows = [
            {"client_id": c.id, "user": u.name, "label": c.label, "created_at_ms": c.created_at_ms}
            for c, u in identity.list_clients(session)
        ]
    _print_rows(rows, as_json, lambda row: f"{row['client_id']}\t{row['user']}\t{row['label']}")


@_admin_command("register-client")
@click.argument("client_id", required=False)
@click.option("--user", help="User the client acts for (name or email) [default: the local owner].")
@click.option("--label", default="", help="Label shown in list-clients.")
def register_client(
    data_dir: Path | None, settings_file: Path | None, client_id: str | None, user: str | None, label: str
) -> None:
    """Register a client for a user (CI machines). Without CLIENT_ID, make a new key pair and print the
    KACHERY_CLOUD_CLIENT_ID and KACHERY_CLOUD_PRIVATE_KEY to give the machine (as secrets)."""
    from kachery_cloud.protocol.keys import client_id_of, generate_private_key, private_key_hex

    from .services import identity

    private_key = None
    if client_id is None:
        private_key = generate_private_key()
        client_id = client_id_of(private_key)
    with _database(data_dir, settings_file) as session:
        owner = _owner_or_user(session, user)
        identity.link_client(session, owner, client_id.lower(), label)
        click.echo(f"registered client {client_id.lower()} for {owner.name}", err=private_key is not None)
    if private_key is not None:
        click.echo(f"KACHERY_CLOUD_CLIENT_ID={client_id}")
        click.echo(f"KACHERY_CLOUD_PRIVATE_KEY={private_key_hex(private_key)}")


@_admin_command("remove-client")
@click.argument("client_id")
def remove_client(data_dir: Path | None, settings_file: Path | None, client_id: str) -> None:
    """Unregister a client; its signatures are refused from now on."""
    from .services import identity

    with _database(data_dir, settings_file) as session:
        identity.remove_client(session, client_id.lower())
        click.echo(f"removed client {client_id.lower()}")


@_admin_command("list-users")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_users(data_dir: Path | None, settings_file: Path | None, as_json: bool) -> None:
    """List users."""
    from sqlalchemy import select

    from .db.models import User

    with _database(data_dir, settings_file) as session:
        rows = [
            {"name": u.name, "email": u.email, "google": u.google_sub is not None, "local_owner": u.is_local_owner}
            for u in session.scalars(select(User).order_by(User.name))
        ]
    _print_rows(
        rows, as_json, lambda row: f"{row['name']}\t{row['email'] or ''}\t{'local owner' if row['local_owner'] else ''}"
    )


@_admin_command("create-user")
@click.argument("name")
@click.option("--email", help="Their Google account's email, if they will also sign in with Google.")
def create_user(data_dir: Path | None, settings_file: Path | None, name: str, email: str | None) -> None:
    """Create a user NAME (give them projects with add-member, or a way in with invite --user NAME)."""
    from .services import identity

    with _database(data_dir, settings_file) as session:
        user = identity.create_user(session, name, email=email)
        click.echo(f"created user {user.name}")


@_admin_command("remove-user")
@click.argument("name")
@click.option("--give-projects-to", metavar="USER", help="Who takes over the projects NAME owns.")
def remove_user(data_dir: Path | None, settings_file: Path | None, name: str, give_projects_to: str | None) -> None:
    """Remove a user, their clients (refused from then on), memberships and open invitations."""
    from .services import identity

    with _database(data_dir, settings_file) as session:
        removed = identity.remove_user(session, name, give_projects_to=give_projects_to)
    given = removed["projects_given"]
    given_text = f"; {', '.join(given)} now owned by {give_projects_to}" if given else ""
    click.echo(f"removed user {removed['user']} and {removed['clients']} client(s){given_text}")


@_admin_command("invite")
@click.argument("project_id")
@click.option("--role", type=click.Choice(["read", "write", "admin"]), required=True, help="Role the link gives.")
@click.option("--user", help="Whom the link registers (made if new) [default: a new user named after the person].")
@click.option(
    "--expires", "ttl_sec", type=DURATION, default="7d", show_default=True, help="Valid for (90m, 12h, 7d ...)."
)
@click.option("--url", help="The server's URL in the link [default: the running server's public URL].")
@click.option(
    "--add-client", is_flag=True, help="--user already has clients: the link registers one more machine of theirs."
)
def invite(
    data_dir: Path | None,
    settings_file: Path | None,
    project_id: str,
    role: str,
    user: str | None,
    ttl_sec: int,
    url: str | None,
    add_client: bool,
) -> None:
    """Print a one-time invitation link to PROJECT_ID with ROLE. Whoever runs `kachery-cloud-init --invite LINK`
    (or kcl.init(invite=LINK)) with it is registered as --user (or a new user) with that role."""
    import time

    from . import runner
    from .services import invitations

    settings = load_settings(settings_file, data_dir=data_dir)
    running = runner.read_pid_file(settings.resolved_data_dir)
    server_url = url or (running or {}).get("public_url") or settings.resolved_public_url
    with _database(data_dir, settings_file) as session:
        token, invitation = invitations.create_invitation(
            session, project_id, role, user_name=user, ttl_sec=ttl_sec, created_by=_login_name(), add_client=add_client
        )
    expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(invitation.expires_at_ms / 1000))
    whom = f"as {invitation.user_name}" if invitation.user_name else "as a new user"
    click.echo(f"invitation to {project_id} ({role}, {whom}, once, until {expires}):", err=True)
    click.echo(invitations.link_of(server_url, token))
    click.echo("use it with: kachery-cloud-init --invite LINK", err=True)


@_admin_command("web-login")
@click.option("--user", help="Whom the link signs in (an admin of some project) [default: the server's owner].")
@click.option(
    "--expires", "ttl_sec", type=DURATION, default="15m", show_default=True, help="Valid for (15m, 2h, 1d ...)."
)
@click.option("--url", help="The server's URL in the link [default: the running server's public URL].")
def web_login(
    data_dir: Path | None, settings_file: Path | None, user: str | None, ttl_sec: int, url: str | None
) -> None:
    """Print a one-time link that signs a browser in to the web app as the server's owner or as --user, who must
    be an admin of a project (members sign in with their invitation link, or with Google)."""
    from . import runner
    from .services import projects, web_sessions

    settings = load_settings(settings_file, data_dir=data_dir)
    running = runner.read_pid_file(settings.resolved_data_dir)
    server_url = url or (running or {}).get("public_url") or settings.resolved_public_url
    if not 60 <= ttl_sec <= 7 * 86400:
        raise click.UsageError("--expires: from 1 minute to 7 days")
    with _database(data_dir, settings_file) as session:
        person = _owner_or_user(session, user)
        if not person.is_local_owner and "admin" not in {
            role for _, role in projects.projects_of_user(session, person)
        }:
            raise click.ClickException(
                f"{person.name} is an admin of no project: web-login is for the owner and admins; invite others "
                "(admin invite), and they join with the link in their browser"
            )
        token = web_sessions.create_sign_in_link(session, person, ttl_sec)
        name = person.name
    click.echo(f"sign-in link for {name} (once, for {_duration_text(ttl_sec)}):", err=True)
    click.echo(web_sessions.link_of(server_url, token))


def _duration_text(seconds: int) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


@_admin_command("list-invitations")
@click.argument("project_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_invitations(data_dir: Path | None, settings_file: Path | None, project_id: str | None, as_json: bool) -> None:
    """List invitations (of one project, or all): role, user, state (open, used, expired)."""
    from .services import invitations

    with _database(data_dir, settings_file) as session:
        rows = [
            {
                "project_id": i.project_id,
                "role": i.role,
                "user": i.user_name,
                "state": invitations.invitation_state(i),
                "created_by": i.created_by,
                "expires_at_ms": i.expires_at_ms,
                "used_by_client_id": i.used_by_client_id,
            }
            for i in invitations.list_invitations(session, project_id)
        ]
    _print_rows(rows, as_json, lambda r: f"{r['project_id']}\t{r['role']}\t{r['user'] or '(new user)'}\t{r['state']}")


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _print_rows(rows: list[dict[str, Any]], as_json: bool, line: Callable[[dict[str, Any]], str]) -> None:
    """A listing as JSON (for scripts) or one tab-separated line per row."""
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(line(row))


if __name__ == "__main__":
    main()
