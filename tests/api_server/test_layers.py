"""The server imports only the client's pure layer-2 modules (shared/DESIGN.md §3 and STYLE.md §6)."""

from __future__ import annotations

import ast
from pathlib import Path

import api_server

PURE_CLIENT_MODULES = {"kachery_cloud.request_signing", "kachery_cloud.keys", "kachery_cloud.hashing",
                       "kachery_cloud.uri", "kachery_cloud.serialization", "kachery_cloud.errors",
                       "kachery_cloud.mutable_key", "kachery_cloud.feed_format",
                       "kachery_cloud.task_format"}  # fmt: skip


def test_the_server_imports_only_pure_client_modules() -> None:
    seen: set[str] = set()
    for path in Path(api_server.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kachery_cloud"):
                seen.add(node.module)
            elif isinstance(node, ast.Import):
                seen.update(a.name for a in node.names if a.name.startswith("kachery_cloud"))
    assert seen, "the server uses the shared signing scheme"
    assert seen <= PURE_CLIENT_MODULES, seen - PURE_CLIENT_MODULES
