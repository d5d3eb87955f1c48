"""Layer 7: mutables, named string values that can change: local ones in the client directory (``*_local``) and
project ones on the API server.

Project mutables have versions (1 when first set, one more on every change). ``expected_version`` makes a set
or delete a compare-and-swap: it happens only if nobody changed the mutable since it was read, else
:class:`VersionConflictError`. Reading needs read access to the project (anyone, for a public project, even in
ephemeral mode); writing needs write access.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._connection import api_client, require_writable
from ._context import local_directory
from ._os_errors import explain_permission_errors
from .config import ClientConfig, load_config
from .errors import InvalidArgumentError
from .protocol.mutable_key import encode_mutable_value, mutable_key
from .protocol.mutable_key import folder_key as canonical_folder_key


@dataclass(frozen=True)
class MutableInfo:
    """A project mutable as the server has it."""

    key: str
    value: str
    version: int
    project_id: str
    updated_at_ms: int
    updated_by_client_id: str


# ------------------------------------------------------------------------------------------------ project


def set_mutable(key: str, value: str, project_id: str | None = None, *, expected_version: int | None = None) -> int:
    """Set the project mutable ``key`` (for example ``@lab/@exp1/latest``) to ``value``; return its new version.

    With ``expected_version``, set it only if it is still at that version (0: only if it is not set), else raise
    :class:`VersionConflictError`: a compare-and-swap, so two writers cannot silently overwrite each other.
    """
    key = mutable_key(key)
    encode_mutable_value(value)
    _check_version(expected_version)
    config = load_config()
    require_writable(config, "set_mutable")
    body = _body(config, project_id, key=key, value=value, expected_version=expected_version)
    # A plain set may be sent twice safely; a compare-and-swap may not (the second would see its own change).
    answer = api_client(config).call("POST", "/api/mutables/set", json_body=body, idempotent=expected_version is None)
    return int(answer["version"])


def get_mutable(key: str, default_value: str | None = None, project_id: str | None = None) -> str | None:
    """The value of the project mutable ``key``, or ``default_value`` if it is not set."""
    info = get_mutable_info(key, project_id)
    return default_value if info is None else info.value


def get_mutable_info(key: str, project_id: str | None = None) -> MutableInfo | None:
    """The project mutable ``key`` with its version (for ``expected_version``) and who changed it last and when;
    None if it is not set."""
    key = mutable_key(key)
    config = load_config()
    answer = api_client(config).call(
        "POST", "/api/mutables/get", json_body=_body(config, project_id, key=key), idempotent=True
    )
    if not answer["found"]:
        return None
    return MutableInfo(
        key=key,
        value=answer["value"],
        version=int(answer["version"]),
        project_id=answer["project_id"],
        updated_at_ms=int(answer["updated_at_ms"]),
        updated_by_client_id=answer["updated_by_client_id"],
    )


def delete_mutable(key: str, project_id: str | None = None, *, expected_version: int | None = None) -> bool:
    """Delete the project mutable ``key``; return whether it was set. ``expected_version`` as for set_mutable."""
    key = mutable_key(key)
    _check_version(expected_version)
    config = load_config()
    require_writable(config, "delete_mutable")
    body = _body(config, project_id, key=key, expected_version=expected_version)
    answer = api_client(config).call(
        "POST", "/api/mutables/delete", json_body=body, idempotent=expected_version is None
    )
    return bool(answer["deleted"])


def delete_mutable_folder(folder_key: str, project_id: str | None = None) -> int:
    """Delete every project mutable under ``folder_key`` (for example ``@lab/@exp1``), all at once; return how
    many there were."""
    folder_key = canonical_folder_key(folder_key)
    config = load_config()
    require_writable(config, "delete_mutable_folder")
    answer = api_client(config).call(
        "POST", "/api/mutables/delete-folder", json_body=_body(config, project_id, folder_key=folder_key),
        idempotent=True,
    )  # fmt: skip
    return int(answer["deleted"])


def list_mutables(folder_key: str | None = None, project_id: str | None = None) -> list[str]:
    """The keys of the project's mutables under ``folder_key`` (all of them if None), sorted."""
    if folder_key is not None:
        folder_key = canonical_folder_key(folder_key)
    config = load_config()
    api = api_client(config)
    keys: list[str] = []
    after: str | None = None
    while True:
        body = _body(config, project_id, folder_key=folder_key, after=after)
        answer = api.call("POST", "/api/mutables/list", json_body=body, idempotent=True)
        keys.extend(item["key"] for item in answer["mutables"])
        after = answer.get("next_after")
        if after is None:
            return keys


def _body(config: ClientConfig, project_id: str | None, **fields: Any) -> dict[str, Any]:
    body = {name: value for name, value in fields.items() if value is not None}
    project = project_id or config.project
    if project:
        body["project_id"] = project
    return body


def _check_version(expected_version: int | None) -> None:
    if expected_version is not None and (
        not isinstance(expected_version, int) or isinstance(expected_version, bool) or expected_version < 0
    ):
        raise InvalidArgumentError(f"expected_version must be an int >= 0 (0: not set), not {expected_version!r}")


# ------------------------------------------------------------------------------------------------ local


@explain_permission_errors
def set_mutable_local(key: str, value: str) -> None:
    """Set the local mutable ``key`` (for example ``@lab/@exp1/latest``) to the string ``value``."""
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
