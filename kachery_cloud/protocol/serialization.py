"""Layer 2: the byte forms of stored objects. Pure functions; the server may import this module.

- JSON: canonical text (sorted keys, separators ``,`` and ``:``, ASCII-escaped, NaN and Infinity refused,
  floats with an integral value written as integers), so equal values give equal bytes and equal URIs.
- NumPy: ``numpy.save(..., allow_pickle=False)``.
- Pickle: protocol 4 (what kachery-cloud wrote) of plain containers, scalars and NumPy arrays only, read
  back with an unpickler that refuses to import anything outside a short allow-list.

NumPy is imported only when an array is involved, so ``import kachery_cloud`` stays light.
"""

from __future__ import annotations

import json
import math
import pickle
from typing import Any, BinaryIO

from ..errors import SerializationError, UnsafePickleError

PICKLE_PROTOCOL = 4
# Deeper JSON is refused (SerializationError) rather than left to hit the recursion limit: no data set needs it,
# and a server must answer such input with 400, not a crash.
MAX_JSON_DEPTH = 200

# ---------------------------------------------------------------------------------------------- JSON


def canonical_json_bytes(value: Any) -> bytes:
    """Canonical JSON of ``value`` as ASCII bytes; raises :class:`SerializationError` for what JSON cannot hold."""
    normalized = _normalize_json(value, "$", [])
    return json.dumps(normalized, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def _normalize_json(x: Any, where: str, active: list[int]) -> Any:
    """Turn ``x`` into plain JSON types (str-keyed dicts, lists, int, finite non-integral float, str, bool, None).
    ``active``: the ids of the containers ``x`` is inside, outermost first."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise SerializationError(f"{where}: {x!r} is not allowed in JSON (NaN and Infinity have no JSON form)")
        return int(x) if x.is_integer() else float(x)
    if _is_numpy_scalar(x):
        return _normalize_json(x.item(), where, active)
    if isinstance(x, (dict, list, tuple)):
        if id(x) in active:
            raise SerializationError(f"{where}: circular reference")
        if len(active) >= MAX_JSON_DEPTH:
            raise SerializationError(f"{where[:200]}...: nested deeper than {MAX_JSON_DEPTH} levels")
        active.append(id(x))
        try:
            if isinstance(x, dict):
                return _normalize_json_dict(x, where, active)
            return [_normalize_json(item, f"{where}[{i}]", active) for i, item in enumerate(x)]
        finally:
            active.pop()
    hint = " (use store_npy, or .tolist())" if type(x).__name__ == "ndarray" else ""
    raise SerializationError(f"{where}: object of type {type(x).__name__} is not JSON serializable{hint}")


def _normalize_json_dict(x: dict[Any, Any], where: str, active: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in x.items():
        text_key = _json_key(key, where)
        if text_key in out:
            raise SerializationError(f"{where}: two keys both become the JSON key {text_key!r}")
        out[text_key] = _normalize_json(item, f"{where}[{key!r}]", active)
    return out


def _json_key(key: Any, where: str) -> str:
    # The same conversions json.dumps applies to non-string keys, done first so that sorting is by the
    # final string: then a value and its JSON round trip always hash the same.
    if isinstance(key, str):
        return key
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(int(key))
    if isinstance(key, float) and math.isfinite(key):
        return float.__repr__(key)
    raise SerializationError(f"{where}: a key of type {type(key).__name__} ({key!r}) cannot be a JSON key")


def _is_numpy_scalar(x: Any) -> bool:
    if not type(x).__module__.startswith("numpy"):
        return False
    import numpy as np

    return isinstance(x, np.generic)


# --------------------------------------------------------------------------------------------- NumPy


def write_npy(array: Any, stream: BinaryIO) -> None:
    """Write ``array`` in .npy format with ``allow_pickle=False``."""
    import numpy as np

    try:
        np.save(stream, array, allow_pickle=False)
    except ValueError as e:  # object arrays, ragged sequences
        raise SerializationError(f"cannot store as .npy: {e}") from None


def read_npy(stream: BinaryIO | str) -> Any:
    """Read an .npy file or stream, never unpickling."""
    import numpy as np

    try:
        return np.load(stream, allow_pickle=False)
    except ValueError as e:
        raise SerializationError(f"not a loadable .npy file: {e}") from None


# -------------------------------------------------------------------------------------------- pickle

_PLAIN_TYPES: frozenset[type] = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray, range, slice})
_CONTAINER_TYPES: frozenset[type] = frozenset({list, tuple, dict, set, frozenset})


def write_pickle(value: Any, stream: BinaryIO) -> None:
    """Pickle ``value`` after checking it holds only allowed types, so what is stored can be loaded again."""
    check_picklable(value)
    pickle.dump(value, stream, protocol=PICKLE_PROTOCOL)


def check_picklable(value: Any) -> None:
    """Raise :class:`SerializationError` naming the first object that :func:`read_pickle` would refuse."""
    stack: list[tuple[Any, str]] = [(value, "$")]
    seen: set[int] = set()
    while stack:
        x, where = stack.pop()
        t = type(x)
        if t in _PLAIN_TYPES:
            continue
        if id(x) in seen:
            continue
        if t in _CONTAINER_TYPES:
            seen.add(id(x))
            if t is dict:
                for k, v in x.items():
                    stack.append((k, f"{where} key {k!r}"))
                    stack.append((v, f"{where}[{k!r}]"))
            else:
                stack.extend((item, f"{where}[{i}]") for i, item in enumerate(x))
            continue
        if t.__module__.startswith("numpy"):
            _check_numpy_picklable(x, where)
            continue
        raise SerializationError(
            f"{where}: objects of type {t.__module__}.{t.__qualname__} cannot be stored with store_pkl; "
            "allowed are None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset, "
            "range, slice, NumPy arrays and NumPy scalars (exact types, not subclasses)"
        )


def _check_numpy_picklable(x: Any, where: str) -> None:
    import numpy as np

    if type(x) is np.ndarray:
        if x.dtype.hasobject:
            raise SerializationError(f"{where}: NumPy arrays with dtype=object cannot be stored with store_pkl")
        return
    if isinstance(x, np.generic | np.dtype):
        if isinstance(x, np.generic) and x.dtype.hasobject:
            raise SerializationError(f"{where}: NumPy object scalars cannot be stored with store_pkl")
        return
    raise SerializationError(
        f"{where}: objects of type {type(x).__module__}.{type(x).__qualname__} "
        "cannot be stored with store_pkl (only plain ndarray and NumPy scalars)"
    )


# The only globals a stored pickle may name. numpy moved numpy.core to numpy._core in 2.0; both spellings
# are accepted so pickles written under either major version load under the other.
_ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    "builtins": frozenset({"complex", "set", "frozenset", "range", "slice", "bytearray"}),
    "_codecs": frozenset({"encode"}),  # how protocol 2 writes bytes
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.numeric": frozenset({"_frombuffer"}),  # protocol 5 arrays
    "numpy._core.numeric": frozenset({"_frombuffer"}),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if name not in _ALLOWED_GLOBALS.get(module, ()):
            raise UnsafePickleError(
                f"refusing to load a pickle that imports {module}.{name}; load_pkl only loads plain containers, "
                "scalars and NumPy arrays"
            )
        if module.startswith(("numpy.core.", "numpy._core.")):
            return self._find_numpy_core(module, name)
        return super().find_class(module, name)

    def _find_numpy_core(self, module: str, name: str) -> Any:
        import numpy as np

        # Try the spelling of the installed numpy first: the other one is a deprecated shim, or missing.
        new_style = module.replace("numpy.core.", "numpy._core.")
        old_style = module.replace("numpy._core.", "numpy.core.")
        numpy_2 = int(np.__version__.split(".")[0]) >= 2
        first, second = (new_style, old_style) if numpy_2 else (old_style, new_style)
        try:
            return super().find_class(first, name)
        except (ImportError, AttributeError):
            return super().find_class(second, name)


def read_pickle(stream: BinaryIO) -> Any:
    """Unpickle with the restricted unpickler; raises :class:`UnsafePickleError` for anything else."""
    try:
        return _RestrictedUnpickler(stream).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise SerializationError(f"not a loadable pickle: {e}") from None
