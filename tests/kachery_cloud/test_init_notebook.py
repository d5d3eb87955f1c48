"""In a Jupyter/Colab kernel, init shows the registration link as a clickable HTML link (and still prints it).

IPython is not a dependency; a minimal stand-in module provides ``get_ipython`` (a shell with a kernel, as in
a notebook) and ``display``, so the test checks what the notebook receives."""

from __future__ import annotations

import sys
import types

import pytest

from kachery_cloud import registration
from kachery_cloud._notebook import in_notebook


@pytest.fixture
def notebook(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    shown: list[str] = []

    class HTML:
        def __init__(self, data: str) -> None:
            self.data = data

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: types.SimpleNamespace(kernel=object())  # type: ignore[attr-defined]
    display_module = types.ModuleType("IPython.display")
    display_module.HTML = HTML  # type: ignore[attr-defined]
    display_module.display = lambda obj: shown.append(obj.data)  # type: ignore[attr-defined]
    ipython.display = display_module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    return shown


def test_the_link_is_clickable_in_a_notebook(notebook: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    answer = {"registration_url": 'https://kachery.lab.org/register/a"b<c', "verification_code": "ABCD-EFGH"}
    registration._show_link(answer, quiet=False)
    assert notebook == [
        '<a href="https://kachery.lab.org/register/a&quot;b&lt;c" target="_blank" rel="noopener">'
        "Register this kachery-cloud client</a>"
    ]
    printed = capsys.readouterr().out
    assert "code: ABCD-EFGH" in printed and "https://kachery.lab.org/register/" in printed


def test_outside_a_notebook_only_text_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert not in_notebook()
    registration._show_link({"registration_url": "http://x/register/r", "verification_code": "C"}, quiet=False)
    assert "http://x/register/r" in capsys.readouterr().out


def test_a_link_that_is_not_http_is_refused(notebook: list[str]) -> None:
    from kachery_cloud.errors import ServerError

    with pytest.raises(ServerError, match="unusable registration link"):
        registration._show_link({"registration_url": "javascript:alert(1)", "verification_code": "C"}, quiet=False)
    assert notebook == []


def test_quiet_still_prints_the_link_and_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    registration._show_link({"registration_url": "http://x/register/r", "verification_code": "WXYZ-2345"}, quiet=True)
    out = capsys.readouterr().out
    assert "http://x/register/r" in out and "WXYZ-2345" in out
