"""The server imports only the client's pure layer-2 modules (shared/DESIGN.md §3 and STYLE.md §6)."""

from __future__ import annotations

import ast
from pathlib import Path

import api_server

PURE_CLIENT_MODULES = {"kachery_cloud.errors"} | {
    f"kachery_cloud.protocol.{name}"
    for name in ("request_signing", "keys", "hashing", "uri", "serialization", "mutable_key", "feed_format",
                 "task_format", "owner_proof", "hosts")
}  # fmt: skip


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


def test_the_shared_modules_live_in_the_protocol_package() -> None:
    """The boundary shows in the folders: every client module the server imports (errors aside) is in
    kachery_cloud/protocol/, and that package imports nothing from the rest of the client but its errors."""
    import kachery_cloud.protocol

    folder = Path(kachery_cloud.protocol.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert node.module == "errors", f"{path.name} imports ..{node.module}"
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kachery_cloud"):
                raise AssertionError(f"{path.name} imports {node.module}")
