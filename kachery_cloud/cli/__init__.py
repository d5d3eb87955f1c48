"""The ``kachery-cloud`` command and its subcommands; thin wrappers over the public API."""

from __future__ import annotations

import click

from .feeds import feed
from .files import cat, link, load, load_info, store, store_local
from .identity import info, init
from .multiuser import multiuser
from .mutables import mutable
from .tasks import task


@click.group()
@click.version_option(package_name="kachery-cloud")
def main() -> None:
    """Share scientific data by content hash."""


for _command in (store, store_local, load, cat, link, load_info, init, info, mutable, feed, task, multiuser):
    main.add_command(_command)

__all__ = [
    "cat",
    "feed",
    "info",
    "init",
    "link",
    "load",
    "load_info",
    "main",
    "multiuser",
    "mutable",
    "store",
    "store_local",
    "task",
]
