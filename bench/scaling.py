"""Many-files scaling: ``store_files`` and ``load_files`` of 1k, 10k and 100k small files, each in a client
process of its own (so its peak RSS is its own; the time is taken inside it, Python's start not counted). Linear
cost means the same time per file at every count."""

from __future__ import annotations

import shutil
from pathlib import Path

from .figures import KIB, _probe, write_small_files
from .samples import Samples
from .stack import Stack

FILE_BYTES = 4 * KIB


def many_files_scaling(stack: Stack, counts: tuple[int, ...], tmp: Path) -> dict[str, Samples]:
    """Samples by name: ``store-{n}`` / ``load-{n}`` (ms per file), ``rss-store-{n}`` / ``rss-load-{n}`` (MiB)."""
    out: dict[str, Samples] = {}
    for count in counts:
        files = write_small_files(tmp / f"scaling-{count}", count, FILE_BYTES)
        paths, uris = tmp / f"scaling-{count}.paths", tmp / f"scaling-{count}.uris"
        paths.write_text("\n".join(str(f) for f in files) + "\n")
        writer = stack.fresh_client()
        stored = _probe(stack, writer, "store-files", str(paths), str(uris))
        reader = stack.fresh_client()
        loaded = _probe(stack, reader, "load-files", str(uris))
        for kind, report in (("store", stored), ("load", loaded)):
            per_file = Samples(f"{kind}_files of {count} x 4 KiB, time per file", "ms")
            per_file.values.append(1000 * report["seconds"] / count)
            out[f"{kind}-{count}"] = per_file
            out[f"rss-{kind}-{count}"] = Samples(f"peak RSS, {kind}_files of {count}", "MiB", [report["peak_mib"]])
        for directory in (writer, reader):
            stack.drop_client(directory)
        shutil.rmtree(files[0].parent)
        paths.unlink()
        uris.unlink()
    return out
