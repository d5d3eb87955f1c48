"""The ``kachery-cloud`` command and its subcommands; thin wrappers over the public API."""

from __future__ import annotations

import click

from .files import cat, link, load, load_info, store, store_local
from .identity import info, init


@click.group()
@click.version_option(package_name="kachery-cloud")
def main() -> None:
    """Share scientific data by content hash."""


for _command in (store, store_local, load, cat, link, load_info, init, info):
    main.add_command(_command)

__all__ = ["cat", "info", "init", "link", "load", "load_info", "main", "store", "store_local"]
