"""Layer 7: mutables, named string values that can change (local part; cloud mutables come later)."""

from __future__ import annotations

from ._context import local_directory
from ._os_errors import explain_permission_errors
from .errors import InvalidArgumentError


@explain_permission_errors
def set_mutable_local(key: str, value: str) -> None:
    """Set the local mutable ``key`` (for example ``@lab/@exp1/latest``) to the string ``value``."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"a mutable value must be a str, not {type(value).__name__}")
    local_directory().mutables.set(key, value)


@explain_permission_errors
def get_mutable_local(key: str, default_value: str | None = None) -> str | None:
    """The value of the local mutable ``key``, or ``default_value`` if it is not set."""
    value = local_directory().mutables.get(key)
    return default_value if value is None else value


@explain_permission_errors
def delete_mutable_local(key: str) -> bool:
    """Delete the local mutable ``key``; return whether it existed."""
    return local_directory().mutables.delete(key)


@explain_permission_errors
def delete_mutable_folder_local(folder_key: str) -> bool:
    """Delete every local mutable under ``folder_key`` (for example ``@lab/@exp1``); return whether it existed."""
    return local_directory().mutables.delete_folder(folder_key)
