"""Hostile input on the real local store: labels, keys, values and URIs never put a byte outside its place."""

import hashlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

import kachery_cloud as kcl
from kachery_cloud.errors import (
    InvalidArgumentError,
    InvalidMutableKeyError,
    InvalidURIError,
    NotFoundError,
)
from kachery_cloud.protocol.mutable_key import mutable_key, validate_folder_key, validate_mutable_key
from kachery_cloud.protocol.uri import is_sha1_hex, parse_uri

from .conftest import Figure, Figures
from .hostile_kit import (
    ANY_CHAR,
    LABELS,
    TEXT_CHAR,
    any_keys,
    fuzz,
    has_surrogate,
    hostile,
    hostile_or_long,
    oracle,
    uri_texts,
)

# ------------------------------------------------------------------------------------ the local store on disk


def check_client_directory(root: Path, mutables: dict[str, str]) -> list[str]:
    """Every file under the client directory in its documented place (doc/configuration.md, DESIGN.md §5), with
    the content its place promises; returns what is wrong."""
    problems: list[str] = []
    found_mutables: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if path.is_symlink():
            problems.append(f"symlink {path}")
            continue
        if path.is_dir():
            if rel[0] == "mutables" and len(rel) > 1:
                try:
                    validate_folder_key("/".join(rel[1:]))
                except InvalidMutableKeyError:
                    problems.append(f"directory outside the key grammar: {path}")
            continue
        match rel:
            case ("config.yaml" | "private.pem" | "public.pem",):
                pass
            case ("sha1", a, b, c, h) if is_sha1_hex(h) and (a, b, c) == (h[0:2], h[2:4], h[4:6]):
                if hashlib.sha1(path.read_bytes()).hexdigest() != h:
                    problems.append(f"blob {path} does not have SHA-1 {h}")
            case ("linked_files", "sha1", a, b, c, h) if is_sha1_hex(h) and (a, b, c) == (h[0:2], h[2:4], h[4:6]):
                if json.loads(path.read_text())["sha1"] != h:
                    problems.append(f"link record {path} is not for {h}")
            case ("hash_memo", kk, name) if is_sha1_hex(name) and kk == name[:2]:
                pass
            case ("tmp", "locks", name) if name.endswith(".lock") and is_sha1_hex(name[: -len(".lock")]):
                pass
            case ("mutables", *segments) if segments:
                key = "/".join(segments)
                try:
                    validate_mutable_key(key)
                except InvalidMutableKeyError:
                    problems.append(f"file outside the key grammar: {path}")
                    continue
                found_mutables[key] = path.read_bytes().decode("utf-8")
            case _:
                problems.append(f"unexpected file {path}")
    if found_mutables != mutables:
        missing = sorted(set(mutables) - set(found_mutables))
        extra = sorted(set(found_mutables) - set(mutables))
        wrong = sorted(k for k in set(mutables) & set(found_mutables) if mutables[k] != found_mutables[k])
        problems.append(f"mutables on disk differ: missing {missing!r}, unexpected {extra!r}, wrong value {wrong!r}")
    return problems


def files_outside(area: Path, allowed: list[Path]) -> list[Path]:
    """Files (and symlinks) under ``area`` that are not under one of the ``allowed`` directories."""
    return [
        p for p in area.rglob("*") if (p.is_file() or p.is_symlink()) and not any(p.is_relative_to(a) for a in allowed)
    ]


def test_local_store_keeps_hostile_labels_keys_and_values_in_their_place(
    kachery_dir: Path, tmp_path: Path, soak: bool, figures: Figures
) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    expected: dict[str, str] = {}
    runs = Counter[str]()
    numbers = itertools.count()
    started = time.monotonic()

    # Segments stay short here (under 200 bytes): longer ones hit the ENAMETOOLONG bug tested above.
    @fuzz(
        soak,
        30,
        LABELS,
        any_keys(),
        hostile(ANY_CHAR, surrogates=True),
        hostile_or_long(TEXT_CHAR),
        st.sampled_from(["keep", "delete", "delete_folder"]),
    )
    def check(label: str | None, key: str, value: str, content: str, then: str) -> None:
        runs["examples"] += 1
        n = next(numbers)
        data = content.encode("utf-8")
        uri = kcl.store_text_local(content, label=label)
        parsed = parse_uri(uri)
        assert (parsed.sha1, parsed.label) == (hashlib.sha1(data).hexdigest(), label)
        assert kcl.load_text(uri, local_only=True) == content

        document = {"label": label, "key": key, "value": value, "content": content}
        uri = kcl.store_json_local(document, label=label)
        assert parse_uri(uri).sha1 == hashlib.sha1(oracle(document)).hexdigest()
        assert kcl.load_json(uri, local_only=True) == document

        source = sources / f"stored-{n}"
        source.write_bytes(data + b"stored %d" % n)
        uri = kcl.store_file_local(source, label=label)
        assert Path(kcl.load_file(uri, local_only=True) or "").read_bytes() == source.read_bytes()
        linked = sources / f"linked-{n}"
        linked.write_bytes(data + b"linked %d" % n)
        uri = kcl.link_file(linked, label=label)
        assert kcl.load_file(uri, local_only=True) == str(linked)

        try:
            kcl.set_mutable_local(key, value)
        except InvalidMutableKeyError:
            runs["keys refused"] += 1
            with pytest.raises(InvalidMutableKeyError):
                kcl.get_mutable_local(key)
            with pytest.raises(InvalidMutableKeyError):
                kcl.delete_mutable_local(key)
            return
        except InvalidArgumentError:
            assert has_surrogate(value)  # the only value a str can hold that UTF-8 cannot
            runs["values refused"] += 1
            return
        runs["keys accepted"] += 1
        stored_as = mutable_key(key)  # the key's one form (NFC): an NFD spelling is the same key
        expected[stored_as] = value
        assert kcl.get_mutable_local(key) == value
        if then == "delete":
            assert kcl.delete_mutable_local(key) is True
            del expected[stored_as]
            assert kcl.get_mutable_local(key) is None
        elif then == "delete_folder" and "/" in key:
            folder = key.rsplit("/", 1)[0]
            assert kcl.delete_mutable_folder_local(folder) is True
            for gone in [k for k in expected if k.startswith(stored_as.rsplit("/", 1)[0] + "/")]:
                del expected[gone]
            assert kcl.get_mutable_local(key) is None

    check()
    problems = check_client_directory(kachery_dir, expected)
    problems += [f"file outside the client directory: {p}" for p in files_outside(tmp_path, [kachery_dir, sources])]
    figures.record(
        Figure(
            item="6 hostile input: local store paths",
            runs=runs["examples"],
            errors=len(problems),
            seconds=time.monotonic() - started,
            details={k: v for k, v in runs.items() if k != "examples"},
        )
    )
    assert problems == []


def test_loading_hostile_uris_locally_refuses_them_and_writes_nothing(
    kachery_dir: Path, tmp_path: Path, soak: bool, figures: Figures
) -> None:
    runs = Counter[str]()
    loaders: list[tuple[str, Callable[[str], Any]]] = [
        ("load_file", lambda u: kcl.load_file(u, local_only=True)),
        ("load_files", lambda u: kcl.load_files([u], local_only=True)[0]),
        ("load_file_info", lambda u: kcl.load_file_info(u, local_only=True)),
        ("load_text", lambda u: kcl.load_text(u, local_only=True)),
        ("load_json", lambda u: kcl.load_json(u, local_only=True)),
        ("load_npy", lambda u: kcl.load_npy(u, local_only=True)),
        ("load_pkl", lambda u: kcl.load_pkl(u, local_only=True)),
        ("load_bytes", lambda u: kcl.load_bytes(u, 0, 1, local_only=True)),
        ("cat_file", lambda u: kcl.cat_file(u, local_only=True)),
    ]

    @fuzz(soak, 100, uri_texts())
    def check(text: str) -> None:
        runs["examples"] += 1
        for name, load in loaders:
            try:
                result = load(text)
            except InvalidURIError:
                runs["refused"] += 1
                continue
            except NotFoundError:  # a well-formed URI of content that is not here
                assert name in ("load_bytes", "cat_file"), name
                continue
            assert result is None, (name, text, result)

    check()
    written = [p for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()]
    figures.record(
        Figure(
            item="6 hostile input: local loads of hostile URIs",
            runs=runs["examples"],
            errors=len(written),
            details={"refusals": runs["refused"], "loaders": len(loaders)},
        )
    )
    assert written == []  # a load with local_only=True writes nothing at all
