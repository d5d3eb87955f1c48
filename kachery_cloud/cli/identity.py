"""``kachery-cloud init`` and ``kachery-cloud info``."""

from __future__ import annotations

import click

from .. import registration
from ..config import load_config
from ._errors import handle_errors


@click.command()
@click.option("--label", help="Label for this client on the server [default: user@hostname].")
@click.option(
    "--invite",
    metavar="LINK",
    help="An invitation link from the server's admin (kachery-cloud-server admin invite): join its project.",
)
@handle_errors
def init(label: str | None, invite: str | None) -> None:
    """Register this client with the API server: as the server's owner on its machine, with an invitation link,
    or (on a server with Google sign-in) by signing in at the link it prints."""
    registration.init(label=label, invite=invite)


@click.command()
@handle_errors
def info() -> None:
    """Show this client's id, owner, project and server."""
    config = load_config()
    client_id = registration.get_client_id() if not config.ephemeral else "(ephemeral: none)"
    click.echo(f"Client id: {client_id}")
    click.echo(f"Server: {config.effective_api_url}")
    click.echo(f"Directory: {config.dir}")
    if config.ephemeral:
        return
    details = registration.get_client_info()
    click.echo(f"Owner: {details['user']}")
    click.echo(f"Label: {details['label']}")
    project = config.project or details.get("default_project_id") or "(none)"
    source = "KACHERY_CLOUD_PROJECT / config.yaml" if config.project else "default project"
    click.echo(f"Project: {project} ({source})")
    for membership in details.get("projects", []):
        click.echo(f"  member of {membership['project_id']} as {membership['role']}")
