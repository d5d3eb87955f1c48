"""Progress bars for long work, shown only when it is long enough to matter and the user wants them.

A bar is created lazily on the first update, so work that turns out to be instant (a memo hit) never
draws one. ``KACHERY_CLOUD_QUIET=1`` turns them all off; tqdm also stays silent when stderr is not a
terminal.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from .config import load_config

PROGRESS_MIN_BYTES = 64 << 20


class ProgressBar:
    """A byte counter that draws a tqdm bar once something is counted, if enabled."""

    def __init__(self, total: int, description: str, enabled: bool) -> None:
        self.total = total
        self.description = description
        self.enabled = enabled
        self._bar: Any = None

    def update(self, n: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=self.description,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
                disable=None,
            )
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def progress_bar(total: int, description: str, *, quiet: bool | None = None) -> ProgressBar:
    """A bar for ``total`` bytes of work, enabled if the work is large and the user is not quiet."""
    if total < PROGRESS_MIN_BYTES:  # decided first: small work, the common case, reads no configuration
        return ProgressBar(total, description, enabled=False)
    if quiet is None:
        quiet = load_config().quiet
    return ProgressBar(total, description, enabled=not quiet)
