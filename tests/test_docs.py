"""Every ```python block in README.md and doc/*.md runs, in order, against a fresh client directory and a
real embedded API server."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import RunningServer, start_server

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "doc").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


PAGES_WITH_EXAMPLES = [page for page in PAGES if BLOCK.search(page.read_text())]


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("docs-server"))
    yield running
    running.stop()


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: p.name)
def test_python_examples_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docs_server: RunningServer
) -> None:
    from kachery_cloud._connection import forget_clients

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KACHERY_CLOUD_API_URL", docs_server.url)
    forget_clients()
    namespace: dict[str, object] = {}
    for block in BLOCK.findall(page.read_text()):
        exec(compile(block, str(page), "exec"), namespace)


def test_every_doc_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"doc/{page.name}" in readme
