"""``kachery-cloud multiuser init DIR --group GROUP``: a client directory a lab shares safely."""

from __future__ import annotations

import click

from .. import lab_directory
from ._errors import handle_errors


@click.group("multiuser")
def multiuser() -> None:
    """A client directory shared by the members of a lab (one Unix group)."""


@multiuser.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--group", required=True, help="The Unix group whose members share the directory.")
@click.option("--api-url", default=None, help="The lab's API server, written to config.yaml.")
@click.option("--project", default=None, help="The project members store into, written to config.yaml.")
@handle_errors
def init(directory: str, group: str, api_url: str | None, project: str | None) -> None:
    """Make DIRECTORY (or repair it) so that GROUP's members share one cache and one client identity, and none
    of them can replace, remove or redirect another's files or change the configuration."""
    lab = lab_directory.init_lab_directory(directory, group, api_url=api_url, project=project)
    click.echo(f"{lab.path}: a lab directory of group {lab.group}, owned by {lab.owner}")
    for what, entries in (("created", lab.created), ("repaired", lab.repaired)):
        for entry in entries:
            click.echo(f"  {what} {entry}")
    for problem in lab.not_repaired:
        click.echo(f"  warning: {problem}", err=True)
    click.echo(f"  the lab's client id: {lab.client_id or '(none: see the warnings)'}")
    click.echo(
        "Members use it with:\n"
        f"  export KACHERY_CLOUD_DIR={lab.path}\n"
        "Register the lab's client with the server once (any member), with an invitation from its admin:\n"
        "  kachery-cloud-init --invite LINK"
    )
