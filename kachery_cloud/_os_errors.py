"""Turns permission problems in the client directory into :class:`LocalFileError` with a useful hint."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from .errors import KacheryCloudError, LocalFileError

P = ParamSpec("P")
R = TypeVar("R")


def explain_permission_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Re-raise ``PermissionError`` as :class:`LocalFileError` naming the path and the usual cause."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except KacheryCloudError:
            raise  # already explained (PermissionDeniedError and EphemeralModeError are PermissionErrors too)
        except PermissionError as e:
            raise LocalFileError(
                f"permission denied: {e.filename or e}. If several users share this kachery-cloud directory, "
                "set 'multiuser: true' in its config.yaml (and make the directory group-owned and setgid)"
            ) from e

    return wrapper
