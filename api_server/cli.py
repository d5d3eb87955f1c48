"""``kachery-cloud-server``: start/stop/status of the server and the ``admin`` commands (which work on the
database directly, beside a running server or without one)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy.orm import Session

from .errors import ApiError
from .settings import DEFAULT_PORT, load_settings

F = TypeVar("F", bound=Callable[..., Any])


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
    "--background", is_flag=True, help="Detach, return once the server answers; log to <data dir>/server.log."
)
@_fail_cleanly
def start(
    data_dir: Path | None, settings_file: Path | None, host: str | None, port: int | None, background: bool
) -> None:
    """Start the server; without an s3 section in the settings, with an embedded nanio store and SQLite.

    The first start creates the data directory, the bucket, the database, a local owner user and a project
    named 'default'; later starts reuse them.
    """
    from . import runner

    settings = load_settings(settings_file, data_dir=data_dir, host=host, port=port)
    if not background:
        runner.run_foreground(settings)
        return
    running = runner.read_pid_file(settings.resolved_data_dir)
    if running is not None:
        # Re-running a setup script should not fail because the server is already up.
        click.echo(f"kachery-cloud-server is already running at {running['url']} (pid {running['pid']})")
        return
    argv = [sys.executable, "-m", "api_server.cli", "start", "--data-dir", str(settings.resolved_data_dir)]
    if settings_file is not None:
        argv += ["--settings", str(settings_file.absolute())]
    argv += ["--host", settings.host, "--port", str(settings.port)]
    info = runner.start_background(settings, argv)
    click.echo(
        f"kachery-cloud-server running at {info['url']} (pid {info['pid']}); stop it with: kachery-cloud-server stop"
    )


@main.command()
@_settings_options
@_fail_cleanly
def stop(data_dir: Path | None, settings_file: Path | None) -> None:
    """Stop the server that uses the data directory (SIGTERM, then wait)."""
    from . import runner

    settings = load_settings(settings_file, data_dir=data_dir)
    stopped = runner.stop(settings.resolved_data_dir)
    click.echo(f"stopped the server at {stopped['url']}" if stopped else "no server is running")


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
    click.echo(f"running at {running['url']} (pid {running['pid']})")


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
@click.option("--quota", "quota_bytes", type=int, help="Storage quota in bytes [default: unlimited].")
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
@click.argument("quota")
def set_quota(data_dir: Path | None, settings_file: Path | None, project_id: str, quota: str) -> None:
    """Set a project's storage quota: QUOTA bytes (suffixes K, M, G, T as powers of 1024) or "none"."""
    from .services import projects

    quota_bytes = _parse_bytes(quota)
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


def _parse_bytes(text: str) -> int | None:
    value = text.strip().upper()
    if value in ("NONE", "UNLIMITED"):
        return None
    factor = 1
    if value and value[-1] in "KMGT":
        factor = 1024 ** ("KMGT".index(value[-1]) + 1)
        value = value[:-1]
    if not value.isdigit():
        raise click.BadParameter(f"{text!r} is not a size in bytes (like 500M, 2G or none)", param_hint="QUOTA")
    return int(value) * factor


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


def _print_rows(rows: list[dict[str, Any]], as_json: bool, line: Callable[[dict[str, Any]], str]) -> None:
    """A listing as JSON (for scripts) or one tab-separated line per row."""
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(line(row))


if __name__ == "__main__":
    main()
