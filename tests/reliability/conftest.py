"""The reliability suite's scale (CI or soak) and the figures each check reports for doc/reliability.md."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Figure:
    """What one check measured: how often it ran, how many faults it injected, what went wrong."""

    item: str  # the item, e.g. "1 client kill -9 during store"
    runs: int
    faults: int = 0
    errors: int = 0  # unexpected errors (expected, clear refusals are not errors)
    data_lost: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class Figures:
    def __init__(self) -> None:
        self.recorded: list[Figure] = []

    def record(self, figure: Figure) -> None:
        self.recorded.append(figure)


_FIGURES = Figures()


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    """True under ``--soak``: checks run at the issue's full counts and durations."""
    return bool(request.config.getoption("--soak"))


@pytest.fixture(scope="session")
def figures() -> Figures:
    return _FIGURES


@pytest.fixture(scope="module")
def world(cloud: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The parties of the attacks and the victim's data, once per server (:mod:`.attack_kit`)."""
    from .attack_kit import build_world

    yield from build_world(cloud, tmp_path_factory)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _FIGURES.recorded:
        return
    terminalreporter.section("reliability figures")
    for f in _FIGURES.recorded:
        terminalreporter.write_line(
            f"{f.item}: runs {f.runs}, faults {f.faults}, errors {f.errors}, data lost {f.data_lost}, "
            f"{f.seconds:.1f} s {json.dumps(f.details, sort_keys=True) if f.details else ''}"
        )
    path = config.getoption("--reliability-report")
    if path:
        report = {"soak": bool(config.getoption("--soak")), "figures": [asdict(f) for f in _FIGURES.recorded]}
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


# The servers of the request-limit checks (test_request_limits, test_request_heads, test_connection_limits), shared
# by the three files; imported last, since limits_kit imports Figure from here.
from .limits_kit import crowded, google, heads, limited, proxied  # noqa: E402, F401
