"""Progress bars for long work, shown only when it is long enough to matter and the user wants them.

A bar is created lazily on the first update, so work that turns out to be instant (a memo hit, content
already stored) never draws one. ``KACHERY_CLOUD_QUIET=1`` or ``quiet=True`` turns them off. In a terminal
tqdm draws on stderr (and stays silent when stderr is not a terminal); in Jupyter or Colab the bar is a
notebook widget when ipywidgets is installed, else text in the cell's output.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from ._notebook import in_notebook
from .config import load_config

# Local hashing and copying: below this, a bar would flash by.
PROGRESS_MIN_BYTES = 64 << 20
# Network transfers are slower: a few MiB already take long enough to want a bar.
TRANSFER_PROGRESS_MIN_BYTES = 8 << 20


class ProgressBar:
    """A byte counter that draws a tqdm bar once something is counted, if enabled. Thread-safe."""

    def __init__(self, total: int, description: str, enabled: bool) -> None:
        self.total = total
        self.description = description
        self.enabled = enabled
        self._bar: Any = None
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._bar is None:
                self._bar = _new_bar(self.total, self.description)
            self._bar.update(n)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def progress_bar(
    total: int, description: str, *, quiet: bool | None = None, min_bytes: int = PROGRESS_MIN_BYTES
) -> ProgressBar:
    """A bar for ``total`` bytes of work, enabled if the work is large and the user is not quiet."""
    if total < min_bytes:  # decided first: small work, the common case, reads no configuration
        return ProgressBar(total, description, enabled=False)
    if quiet is None:
        quiet = load_config().quiet
    return ProgressBar(total, description, enabled=not quiet)


def _new_bar(total: int, description: str) -> Any:
    options: dict[str, Any] = {
        "total": total,
        "desc": description,
        "unit": "B",
        "unit_scale": True,
        "unit_divisor": 1024,
        "leave": False,
    }
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401  (tqdm.notebook needs it, and only warns if it is missing)
            from tqdm.notebook import tqdm as notebook_tqdm

            return notebook_tqdm(**options)
        except ImportError:
            from tqdm import tqdm

            return tqdm(**options, disable=False)  # the cell shows stderr, though it is not a terminal
    from tqdm import tqdm

    return tqdm(**options, disable=None)
