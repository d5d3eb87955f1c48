"""CLI commands for storing and loading files; each is also installed as ``kachery-cloud-<name>``."""

from __future__ import annotations

import json
import os

import click

from .. import files
from ._errors import handle_errors

_LABEL_HELP = "Label to put in the URI (default: the file name). Labels never change the hash."


@click.command("store-local")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--label", default=None, help=_LABEL_HELP)
@handle_errors
def store_local(file: str, label: str | None) -> None:
    """Copy FILE into the local store and print its URI."""
    click.echo(files.store_file_local(file, label=_label_for(file, label)))


@click.command("link")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--label", default=None, help=_LABEL_HELP)
@handle_errors
def link(file: str, label: str | None) -> None:
    """Make FILE loadable by its URI without copying it, and print the URI."""
    click.echo(files.link_file(file, label=_label_for(file, label)))


@click.command("load")
@click.argument("uri")
@click.option("--dest", default=None, type=click.Path(path_type=str), help="Copy the content to this path.")
@click.option("--local-only", is_flag=True, help="Look only in the local store.")
@handle_errors
def load(uri: str, dest: str | None, local_only: bool) -> None:
    """Print the local path of the content URI names (or copy it to --dest)."""
    path = files.load_file(uri, local_only=local_only, dest=dest)
    if path is None:
        raise click.ClickException(f"{uri} is not in the local store")
    click.echo(path)


@click.command("cat")
@click.argument("uri")
@click.option("--local-only", is_flag=True, help="Look only in the local store.")
@handle_errors
def cat(uri: str, local_only: bool) -> None:
    """Write the content URI names to standard output."""
    files.cat_file(uri, local_only=local_only)


@click.command("load-info")
@click.argument("uri")
@click.option("--local-only", is_flag=True, help="Look only in the local store.")
@handle_errors
def load_info(uri: str, local_only: bool) -> None:
    """Print what is known about the content URI names, as JSON."""
    info = files.load_file_info(uri, local_only=local_only)
    if info is None:
        raise click.ClickException(f"{uri} is not in the local store")
    click.echo(json.dumps(info, indent=2))


def _label_for(file: str, label: str | None) -> str:
    return os.path.basename(file) if label is None else label
