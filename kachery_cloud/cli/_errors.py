"""Turns library errors into one-line messages and exit codes, in one place for every command."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import KacheryCloudError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(command: F) -> F:
    """Report :class:`KacheryCloudError` as ``Error: <message>`` with exit code 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KacheryCloudError as e:
            raise click.ClickException(str(e)) from None
        except BrokenPipeError:
            # The reader went away (``kachery-cloud-cat URI | head``): stop quietly, like cat does.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(141)

    return wrapper  # type: ignore[return-value]
