"""Hostile input: canonical JSON against an independent oracle (hypothesis), non-string keys, NaN."""

import json
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example
from hypothesis import strategies as st

from kachery_cloud.errors import (
    SerializationError,
)
from kachery_cloud.protocol.serialization import canonical_json_bytes

from .conftest import Figure, Figures
from .hostile_kit import ANY_CHAR, fuzz, hostile, oracle

# ---------------------------------------------------------------------------------------------- canonical JSON


def walk(x: Any) -> Iterator[Any]:
    yield x
    if isinstance(x, dict):
        for k, v in x.items():
            yield k
            yield from walk(v)
    elif isinstance(x, list | tuple):
        for v in x:
            yield from walk(v)


def reordered(x: Any, rng: random.Random) -> Any:
    """The same value with every dict's insertion order shuffled and every list turned into a tuple."""
    if isinstance(x, dict):
        items = list(x.items())
        rng.shuffle(items)
        return {k: reordered(v, rng) for k, v in items}
    if isinstance(x, list):
        return tuple(reordered(v, rng) for v in x)
    return x


def json_values(
    keys: st.SearchStrategy[Any] | None = None, floats: st.SearchStrategy[float] | None = None
) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**70), max_value=2**70),
        floats if floats is not None else st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e16, 1e300, 2.5, 1e-300, 5e-324, 1.7976931348623157e308]),
        hostile(ANY_CHAR, surrogates=True),
    )
    key_strategy = keys if keys is not None else hostile(ANY_CHAR, surrogates=True)
    return st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key_strategy, inner, max_size=4),
        max_leaves=25,
    )  # fmt: skip


def has_split_pair(value: Any) -> bool:
    """Whether a string holds a high then a low lone surrogate: JSON writes them as the escapes of one character
    outside the BMP, which json.loads reads back as that character. Not a hashing problem (both strings give the
    same canonical bytes, checked below), but such a value does not come back equal."""
    return any(isinstance(v, str) and re.search("[\ud800-\udbff][\udc00-\udfff]", v) is not None for v in walk(value))


def test_canonical_json_follows_the_documented_rules_and_agrees_with_the_oracle(soak: bool, figures: Figures) -> None:
    runs = Counter[str]()

    @fuzz(soak, 150, json_values(), st.randoms(use_true_random=False))
    def check(value: Any, rng: random.Random) -> None:
        runs["examples"] += 1
        data = canonical_json_bytes(value)
        assert data == oracle(value)
        if not any(isinstance(v, float) for v in walk(value)):  # nothing to normalize: plain json.dumps agrees
            plain = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
            assert data == plain
        assert data.isascii()
        parsed = json.loads(data)
        if not has_split_pair(value):
            assert parsed == value  # 1 == 1.0 in Python: the int/float rule keeps values equal
        assert not any(isinstance(v, float) and v.is_integer() for v in walk(parsed))
        assert canonical_json_bytes(parsed) == data  # a value and its JSON round trip hash the same
        # Neither dict insertion order nor tuples-for-lists change the bytes (or the hash).
        assert canonical_json_bytes(reordered(value, rng)) == data
        assert canonical_json_bytes(value) == data  # deterministic

    check()
    figures.record(Figure(item="6 hostile input: canonical JSON against the json.dumps oracle", runs=runs["examples"]))


def test_canonical_json_refuses_nan_and_infinity_anywhere_with_serialization_error(soak: bool) -> None:
    import numpy as np

    @fuzz(soak, 100, json_values(floats=st.floats()))
    def check(value: Any) -> None:
        non_finite = any(isinstance(v, float) and not math.isfinite(v) for v in walk(value))
        if non_finite:
            with pytest.raises(SerializationError, match=r"^\$.*(nan|inf)"):  # the message names the place
                canonical_json_bytes(value)
        else:
            assert canonical_json_bytes(value) == oracle(value)

    check()
    for bad in (
        float("nan"),
        [1, {"a": float("-inf")}],
        np.float64("nan"),
        {"x": np.float32("inf")},
        {float("nan"): 1},
    ):
        with pytest.raises(SerializationError):
            canonical_json_bytes(bad)


def json_key_of(key: Any) -> str:
    """The string json.dumps itself makes of a non-string dict key (an independent oracle)."""
    return next(iter(json.loads(json.dumps({key: 0}))))


def test_canonical_json_converts_non_string_keys_like_json_dumps_and_refuses_collisions(soak: bool) -> None:
    keys = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), hostile(ANY_CHAR, surrogates=True))

    @fuzz(soak, 100, st.dictionaries(keys, st.integers(), max_size=6))
    @example({1: 1, "1": 2})
    @example({None: 1, "null": 2})
    @example({True: 1, "true": 2})
    @example({1.5: 1, "1.5": 2})
    def check(value: dict[Any, int]) -> None:
        non_finite = any(isinstance(k, float) and not math.isfinite(k) for k in value)
        mapped = {} if non_finite else {json_key_of(k): v for k, v in value.items()}
        if non_finite or len(mapped) < len(value):
            with pytest.raises(SerializationError):
                canonical_json_bytes(value)
            return
        data = canonical_json_bytes(value)
        assert data == oracle(mapped)  # keys are sorted as the strings they become
        assert canonical_json_bytes(json.loads(data)) == data

    check()
