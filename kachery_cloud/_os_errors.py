"""Turns permission problems and a full disk in the client directory into :class:`LocalFileError` with a
useful hint."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from .errors import KacheryCloudError, LocalFileError

P = ParamSpec("P")
R = TypeVar("R")


def explain_permission_errors(function: Callable[P, R]) -> Callable[P, R]:
    """Re-raise ``PermissionError`` and a full disk as :class:`LocalFileError` naming the path and what to do."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except KacheryCloudError:
            raise  # already explained (PermissionDeniedError and EphemeralModeError are PermissionErrors too)
        except PermissionError as e:
            raise LocalFileError(
                f"permission denied: {e.filename or e}. If several users share this kachery-cloud directory, its "
                "owner makes it a lab directory with `kachery-cloud multiuser init DIR --group GROUP`"
            ) from e
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = e.filename or "the kachery-cloud directory (KACHERY_CLOUD_DIR)"
            raise LocalFileError(
                f"no space left on the disk holding {where} ({e.strerror}); nothing partial was kept. Free some "
                "space, or set KACHERY_CLOUD_DIR to a directory on a larger disk"
            ) from e

    return wrapper
