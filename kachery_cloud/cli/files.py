"""CLI commands for storing and loading files; each is also installed as ``kachery-cloud-<name>``."""

from __future__ import annotations

import json
import os

import click

from .. import files, storing
from ._errors import handle_errors

_LABEL_HELP = "Label to put in the URI (default: the file name). Labels never change the hash."


@click.command("store")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--label", default=None, help=_LABEL_HELP)
@click.option("--cache-locally", is_flag=True, help="Also copy the file into the local store.")
@handle_errors
def store(file: str, label: str | None, cache_locally: bool) -> None:
    """Upload FILE to the current project and print its URI."""
    click.echo(storing.store_file(file, label=_label_for(file, label), cache_locally=cache_locally))


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
    """Print the local path of the content URI names, downloading it first if needed (or copy it to --dest)."""
    path = files.load_file(uri, local_only=local_only, dest=dest)
    if path is None:
        raise click.ClickException(_not_available(uri, local_only))
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
        raise click.ClickException(_not_available(uri, local_only))
    click.echo(json.dumps(info, indent=2))


def _not_available(uri: str, local_only: bool) -> str:
    if local_only:
        return f"{uri} is not in the local store"
    return f"{uri} is not in the local store or in any project this client can read"


def _label_for(file: str, label: str | None) -> str:
    return os.path.basename(file) if label is None else label
