"""Repeated measurements and what the report says of them: median, spread (min-max), p95."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Samples:
    """The repetitions of one measurement, in ``unit`` (s, ms, us, MiB, MiB/s)."""

    label: str
    unit: str
    values: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def p95(self) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]

    def stat(self, name: str) -> float:
        return self.p95 if name == "p95" else self.median

    def spread(self) -> str:
        return f"{_fmt(min(self.values))}-{_fmt(max(self.values))}"

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": self.unit,
            "n": len(self.values),
            "median": self.median,
            "p95": self.p95,
            "min": min(self.values),
            "max": max(self.values),
            "values": self.values,
            **({"notes": self.notes} if self.notes else {}),
        }


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` took."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def fmt(x: float, unit: str) -> str:
    return f"{_fmt(x)} {unit}"
