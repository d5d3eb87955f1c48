"""When progress bars are drawn: for transfers over a few MiB, not when quiet, and in notebooks even though
a notebook's stderr is not a terminal. IPython is not a dependency: a stand-in module plays the kernel."""

from __future__ import annotations

import sys
import types

import pytest

from kachery_cloud._progress import TRANSFER_PROGRESS_MIN_BYTES, progress_bar

BIG = TRANSFER_PROGRESS_MIN_BYTES * 2


@pytest.fixture
def in_a_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: types.SimpleNamespace(kernel=object())  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed: the bar falls back to text


def draw(total: int, **options: object) -> None:
    with progress_bar(total, "loading data.bin", min_bytes=TRANSFER_PROGRESS_MIN_BYTES, **options) as bar:
        bar.update(total // 2)
        bar.update(total - total // 2)


def test_a_notebook_gets_a_bar_though_its_stderr_is_no_terminal(
    in_a_notebook: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KACHERY_CLOUD_QUIET")
    draw(BIG)
    assert "loading data.bin" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("total", "quiet_env", "quiet"),
    [(BIG, "1", None), (BIG, None, True), (TRANSFER_PROGRESS_MIN_BYTES - 1, None, None)],
    ids=["KACHERY_CLOUD_QUIET=1", "quiet=True", "small transfer"],
)
def test_no_bar_when_quiet_or_small(
    in_a_notebook: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    total: int,
    quiet_env: str | None,
    quiet: bool | None,
) -> None:
    if quiet_env is None:
        monkeypatch.delenv("KACHERY_CLOUD_QUIET")
    draw(total, quiet=quiet)
    assert capsys.readouterr().err == ""


def test_outside_a_notebook_tqdm_stays_silent_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KACHERY_CLOUD_QUIET")
    draw(BIG)
    assert capsys.readouterr().err == ""
