"""Layer 2: what tasks are made of, shared by clients, workers and the server. Pure functions.

- A task is ``(task_type, task_name, task_input)``: the type is ``calculation`` (pure: the same name and input
  always give the same result, so a finished result is reused) or ``action`` (runs every time it is asked for).
- A calculation's id is its *job id*: the SHA-1 of the canonical JSON of ``{"taskName": ..., "taskInput": ...}``,
  so every client asking for the same calculation names the same task. An action's id is the SHA-1 of its
  requester's client id and a random request id (so a retried request is not run twice, and no client can take
  a calculation's id for an action).
- Results are JSON blobs of the task's project. NumPy arrays inside a result travel as
  ``{"__ndarray__": "<base64 of the .npy bytes>"}``, which keeps dtype, shape and every bit.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any

from ..errors import InvalidArgumentError
from .hashing import sha1_of_bytes
from .serialization import canonical_json_bytes

TASK_TYPES = ("calculation", "action")
TASK_STATES = ("pending", "running", "finished", "error", "cancelled")
FINAL_STATES = ("finished", "error", "cancelled")
TASK_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,254}\Z")
TASK_ID_RE = re.compile(r"^[0-9a-f]{40}\Z")
MAX_INPUT_BYTES = 1 << 20  # canonical JSON of a task input; larger data goes in by URI
# A result up to this size (canonical JSON) travels in the completion and in the requester's answer; the server
# stores it as a blob itself. Larger ones the worker uploads as a blob, and the requester downloads.
MAX_INLINE_RESULT_BYTES = 256 << 10
MAX_ERROR_CHARS = 16_000  # of a failed task's error message (the end of a traceback is what matters)
MAX_PROGRESS_CHARS = 1000  # of one progress message
MAX_WAIT_SEC = 30  # longest single long-poll

_NDARRAY_KEY = "__ndarray__"


def validate_task_type(task_type: Any) -> str:
    if task_type not in TASK_TYPES:
        raise InvalidArgumentError(f"task_type must be 'calculation' or 'action', not {task_type!r}")
    return task_type


def validate_task_name(task_name: Any) -> str:
    if not isinstance(task_name, str) or not TASK_NAME_RE.match(task_name):
        raise InvalidArgumentError(
            f"invalid task name {str(task_name)[:80]!r}: use 1-255 letters, digits and '_ . : / -', starting with a "
            "letter, digit or '_' (for example 'mylab.count_spikes.1')"
        )
    return task_name


def validate_task_id(task_id: Any) -> str:
    if not isinstance(task_id, str) or not TASK_ID_RE.match(task_id):
        raise InvalidArgumentError(f"invalid task id {str(task_id)[:80]!r}: expected 40 lowercase hex digits")
    return task_id


def input_json(task_input: Any) -> bytes:
    """The canonical JSON of a task input (a dict of keyword arguments), checked for type and size."""
    if not isinstance(task_input, dict):
        raise InvalidArgumentError(
            f"task_input must be a dict (the task function's keyword arguments), not {type(task_input).__name__}"
        )
    data = canonical_json_bytes(task_input)
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidArgumentError(
            f"task_input is {len(data)} bytes as JSON; at most {MAX_INPUT_BYTES} are allowed. Store large data "
            "first (kcl.store_npy, store_file ...) and pass its URI"
        )
    return data


def job_id(task_name: str, task_input: Any) -> str:
    """The id of the calculation ``task_name`` on ``task_input``: the same on every machine."""
    return sha1_of_bytes(canonical_json_bytes({"taskName": task_name, "taskInput": task_input}))


def action_id(client_id: str, request_id: str) -> str:
    """The id of the action a client requested with ``request_id`` (32 random hex digits of its choosing)."""
    return sha1_of_bytes(f"kachery-cloud-action\n{client_id}\n{request_id}".encode("ascii"))


def clean_text(text: str) -> str:
    """``text`` as a database keeps it everywhere: NUL characters and unpaired surrogates (from file names that
    are not UTF-8) written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def encode_result(value: Any) -> bytes:
    """A task function's return value as canonical JSON, NumPy arrays (anywhere inside) made exact JSON."""
    return canonical_json_bytes(_encode(value))


def decode_result(value: Any) -> Any:
    """The inverse of :func:`encode_result` on the parsed JSON."""
    if isinstance(value, dict):
        if len(value) == 1 and _NDARRAY_KEY in value and isinstance(value[_NDARRAY_KEY], str):
            import numpy as np

            return np.load(io.BytesIO(base64.b64decode(value[_NDARRAY_KEY])), allow_pickle=False)
        return {k: decode_result(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_result(v) for v in value]
    return value


def _encode(value: Any) -> Any:
    if type(value).__name__ == "ndarray" and type(value).__module__ == "numpy":
        import numpy as np

        buffer = io.BytesIO()
        try:
            np.save(buffer, value, allow_pickle=False)
        except ValueError:
            raise InvalidArgumentError(
                f"a task result holds a NumPy array of dtype {value.dtype}, which cannot be saved without pickling"
            ) from None
        return {_NDARRAY_KEY: base64.b64encode(buffer.getvalue()).decode("ascii")}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value
