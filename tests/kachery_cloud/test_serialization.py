"""Byte forms of stored objects: canonical JSON, .npy, restricted pickles, and kachery-cloud's hashes."""

import io
import json
import math
import pickle
from collections import OrderedDict, namedtuple

import numpy as np
import pytest

from kachery_cloud import SerializationError, UnsafePickleError
from kachery_cloud.protocol.hashing import sha1_of_bytes
from kachery_cloud.protocol.serialization import canonical_json_bytes, read_pickle, write_npy, write_pickle


def pickle_bytes(value: object) -> bytes:
    """What store_pkl stores for ``value``."""
    buffer = io.BytesIO()
    write_pickle(value, buffer)
    return buffer.getvalue()


# Hashes published in kachery-cloud's doc/store_load_data_local.md.
DOC_ARRAY = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int16)


def test_text_and_json_hashes_match_kachery_cloud_docs() -> None:
    assert sha1_of_bytes(b"test-content\n") == "b971c6ef19b1d70ae8f0feb989b106c319b36230"
    assert sha1_of_bytes(canonical_json_bytes({"example": "dict"})) == "d0d9555e376ff13a08c6d56072808e27ca32d54a"


def test_npy_hash_matches_kachery_cloud_docs() -> None:
    buffer = io.BytesIO()
    write_npy(DOC_ARRAY, buffer)
    assert sha1_of_bytes(buffer.getvalue()) == "bb55205a2482c6db2ace544fc7d8397551110701"


def test_pickle_hash_matches_kachery_cloud_under_the_same_numpy_major_version() -> None:
    # kachery-cloud pickled with protocol 4; numpy 2 renamed numpy.core to numpy._core inside the pickle.
    expected = {1: "20d178d5a1264fc3267e38ca238c23f3e2dcd5d2", 2: "d3496b82a6e39cb9961a828aa6cdbf456039252b"}
    numpy_major = int(np.__version__.split(".")[0])
    assert sha1_of_bytes(pickle_bytes({"example": DOC_ARRAY})) == expected[numpy_major]


def test_canonical_json_sorts_keys_and_uses_compact_ascii() -> None:
    assert canonical_json_bytes({"b": 1, "a": [1, "é", None, True]}) == b'{"a":[1,"\\u00e9",null,true],"b":1}'


def test_canonical_json_writes_integral_floats_as_integers() -> None:
    assert canonical_json_bytes({"x": 1.0, "y": -0.0, "z": 1.5, "w": 2.0e3}) == b'{"w":2000,"x":1,"y":0,"z":1.5}'
    assert canonical_json_bytes([1.0]) == canonical_json_bytes([1])


def test_canonical_json_converts_numpy_scalars_and_tuples() -> None:
    value = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "t": (1, 2)}
    assert canonical_json_bytes(value) == b'{"b":true,"f":0.5,"i":3,"t":[1,2]}'


def test_canonical_json_is_stable_through_a_json_round_trip() -> None:
    value = {10: "a", 2: "b", "x": [1.0, {"z": None}]}
    text = canonical_json_bytes(value)
    assert canonical_json_bytes(json.loads(text)) == text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_canonical_json_refuses_nan_and_infinity(bad: float) -> None:
    with pytest.raises(SerializationError, match=r"\$\['a'\]\[1\].*NaN and Infinity"):
        canonical_json_bytes({"a": [0, bad]})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": {1, 2}}, r"\$\['a'\]: object of type set"),
        ({"a": DOC_ARRAY}, "use store_npy"),
        ({1: "x", "1": "y"}, "two keys both become the JSON key '1'"),
        ({(1, 2): "x"}, "cannot be a JSON key"),
        (b"bytes", "bytes is not JSON serializable"),
    ],
)
def test_canonical_json_names_what_cannot_be_serialized(value: object, message: str) -> None:
    with pytest.raises(SerializationError, match=message) as info:
        canonical_json_bytes(value)
    assert isinstance(info.value, TypeError)


def test_canonical_json_detects_cycles() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(SerializationError, match="circular"):
        canonical_json_bytes(cyclic)


def test_pickle_round_trips_allowed_types_exactly() -> None:
    value = {
        "none": None,
        "nums": [1, 2.5, 3j, True],
        "text": ("s", b"b", bytearray(b"ba")),
        "sets": [{1, 2}, frozenset({3})],
        "range": range(0, 10, 2),
        "slice": slice(1, 5),
        "arrays": [DOC_ARRAY, np.arange(5, dtype=np.float64), np.zeros((2, 2), dtype=[("a", "<i4"), ("b", "<f8")])],
        "scalars": [np.float32(1.5), np.int8(-3), np.bool_(False)],
    }
    loaded = read_pickle(io.BytesIO(pickle_bytes(value)))
    assert loaded.keys() == value.keys()
    for key in ("none", "nums", "text", "sets", "range", "slice", "scalars"):
        assert loaded[key] == value[key]
    for got, want in zip(loaded["arrays"], value["arrays"], strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": object()}, r"\$\['a'\]: objects of type builtins.object"),
        (OrderedDict(a=1), "collections.OrderedDict"),
        ([namedtuple("P", "x")(1)], r"\$\[0\]: objects of type"),
        (np.array([{}, 1], dtype=object), "dtype=object"),
        (np.ma.masked_array([1, 2]), "MaskedArray"),
    ],
)
def test_pickle_refuses_to_store_what_could_not_be_loaded(value: object, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        pickle_bytes(value)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_refuses_imports_outside_the_allow_list(protocol: int) -> None:
    data = pickle.dumps({"x": _Evil()}, protocol=protocol)
    with pytest.raises(UnsafePickleError, match=r"imports (posix|os)\.system"):
        read_pickle(io.BytesIO(data))


def test_restricted_unpickler_loads_other_protocols_and_numpy_1_pickles() -> None:
    for protocol in (2, 3, 5):
        loaded = read_pickle(io.BytesIO(pickle.dumps({"a": DOC_ARRAY, "b": b"x"}, protocol=protocol)))
        np.testing.assert_array_equal(loaded["a"], DOC_ARRAY)
        assert loaded["b"] == b"x"
    # The same pickle as numpy 1.x writes it (module numpy.core.multiarray): still loads.
    data = pickle.dumps(DOC_ARRAY, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    np.testing.assert_array_equal(read_pickle(io.BytesIO(data)), DOC_ARRAY)


def test_npy_refuses_object_arrays() -> None:
    with pytest.raises(SerializationError, match=r"\.npy"):
        write_npy(np.array([{}, 1], dtype=object), io.BytesIO())


def test_garbage_is_not_a_pickle() -> None:
    with pytest.raises(SerializationError, match="not a loadable pickle"):
        read_pickle(io.BytesIO(b"not a pickle"))
