"""``kachery-cloud mutable get|set|delete|list``: project mutables (``--local``: the client directory's)."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from .. import mutables
from ._errors import handle_errors

_PROJECT = click.option("--project", default=None, help="Project id [default: KACHERY_CLOUD_PROJECT, else yours].")
_LOCAL = click.option("--local", is_flag=True, help="Use the local mutables of the client directory instead.")
_EXPECTED = click.option(
    "--expected-version",
    type=click.IntRange(min=0),
    default=None,
    help="Compare-and-swap: act only if the mutable is still at this version (0: only if it is not set).",
)


@click.group("mutable")
def mutable() -> None:
    """Named values that can change, such as the URI of the latest result (@lab/@exp1/latest)."""


@mutable.command("get")
@click.argument("key")
@_PROJECT
@_LOCAL
@click.option("--info", is_flag=True, help="Print the value with its version, author and time, as JSON.")
@handle_errors
def get(key: str, project: str | None, local: bool, info: bool) -> None:
    """Print the value of KEY (exit code 1 if it is not set)."""
    if local:
        if info:
            raise click.UsageError("--info is for project mutables (local ones have no versions)")
        value = mutables.get_mutable_local(key)
    else:
        found = mutables.get_mutable_info(key, project)
        if found is not None and info:
            click.echo(json.dumps(dataclasses.asdict(found), indent=2))
            return
        value = found.value if found is not None else None
    if value is None:
        raise click.ClickException(f"{key} is not set")
    click.echo(value)


@mutable.command("set")
@click.argument("key")
@click.argument("value")
@_PROJECT
@_LOCAL
@_EXPECTED
@handle_errors
def set_(key: str, value: str, project: str | None, local: bool, expected_version: int | None) -> None:
    """Set KEY to VALUE and print the new version. VALUE '-' reads standard input, without its final newline
    (as `echo URI | ... set KEY -` means)."""
    if value == "-":
        value = sys.stdin.read().removesuffix("\n")
    if local:
        if expected_version is not None:
            raise click.UsageError("--expected-version is for project mutables (local ones have no versions)")
        mutables.set_mutable_local(key, value)
        return
    version = mutables.set_mutable(key, value, project, expected_version=expected_version)
    click.echo(f"version {version}")


@mutable.command("delete")
@click.argument("key")
@_PROJECT
@_LOCAL
@_EXPECTED
@click.option("--folder", is_flag=True, help="KEY is a folder (@lab/@exp1): delete every mutable under it.")
@handle_errors
def delete(key: str, project: str | None, local: bool, expected_version: int | None, folder: bool) -> None:
    """Delete KEY (or, with --folder, everything under it)."""
    if local and expected_version is not None:
        raise click.UsageError("--expected-version is for project mutables (local ones have no versions)")
    if folder:
        if expected_version is not None:
            raise click.UsageError("--expected-version applies to one key, not to --folder")
        if local:
            existed = mutables.delete_mutable_folder_local(key)
            click.echo(f"deleted {key}" if existed else f"{key} did not exist")
        else:
            count = mutables.delete_mutable_folder(key, project)
            click.echo(f"deleted {count} mutable{'s' if count != 1 else ''} under {key}")
        return
    if local:
        existed = mutables.delete_mutable_local(key)
    else:
        existed = mutables.delete_mutable(key, project, expected_version=expected_version)
    click.echo(f"deleted {key}" if existed else f"{key} was not set")


@mutable.command("list")
@click.argument("folder", required=False)
@_PROJECT
@handle_errors
def list_(folder: str | None, project: str | None) -> None:
    """Print the keys under FOLDER (every key of the project if none is given), one per line."""
    for key in mutables.list_mutables(folder, project):
        click.echo(key)
