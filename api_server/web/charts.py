"""The usage page's bar charts, drawn on the server as inline SVG: no chart library, no script."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from ..services.usage import human_bytes

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 440, 160, 64, 18, 16


@dataclass(frozen=True)
class Series:
    key: str
    title: str
    values: list[int]
    fmt: Callable[[int], str]


def daily_series(
    rows: list[dict[str, Any]], days: int = 30, today: datetime.date | None = None
) -> tuple[list[str], list[Series]]:
    """The last ``days`` days, oldest first: each day's counters (zero where nothing happened), and the bytes
    stored at the end of it (carried over from the last day that changed them)."""
    end = today or datetime.datetime.now(datetime.UTC).date()
    by_day = {row["day"]: row for row in rows}
    stored = 0
    for row in rows:  # what was kept before the window
        if row["day"] < (end - datetime.timedelta(days=days - 1)).isoformat() and row.get("stored_bytes") is not None:
            stored = row["stored_bytes"]
    labels: list[str] = []
    columns: dict[str, list[int]] = {"requests": [], "bytes_in": [], "bytes_out": [], "stored_bytes": []}
    for i in range(days - 1, -1, -1):
        day = (end - datetime.timedelta(days=i)).isoformat()
        row = by_day.get(day, {})
        if row.get("stored_bytes") is not None:
            stored = row["stored_bytes"]
        labels.append(day)
        for name in ("requests", "bytes_in", "bytes_out"):
            columns[name].append(int(row.get(name, 0)))
        columns["stored_bytes"].append(stored)
    return (
        labels,
        [
            Series("requests", "Requests", columns["requests"], lambda n: f"{n:,}"),
            Series("bytes_in", "Bytes in (recorded)", columns["bytes_in"], human_bytes),
            Series("bytes_out", "Bytes out (handed out)", columns["bytes_out"], human_bytes),
            Series("stored_bytes", "Bytes stored", columns["stored_bytes"], human_bytes),
        ],
    )


def bar_chart(labels: list[str], series: Series) -> Markup:
    """One series as an SVG bar chart, with its maximum on the axis and each bar's value in its tooltip."""
    top = max(series.values, default=0)
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    step = plot_w / max(1, len(series.values))
    parts = [
        f'<svg class="chart" id="chart-{series.key}" role="img" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}"><title>{escape(series.title)}</title>',
        f'<text x="4" y="12">{escape(series.title)}</text>',
        f'<text x="4" y="{TOP + 10}">{escape(series.fmt(top))}</text>',
        f'<text x="4" y="{TOP + plot_h}">0</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 4}" y2="{TOP + plot_h}" stroke="#999"/>',
    ]
    for i, (label, value) in enumerate(zip(labels, series.values, strict=True)):
        h = 0 if top == 0 else max(1.0, plot_h * value / top) if value else 0
        x = LEFT + i * step
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(1.0, step - 2):.1f}" height="{h:.1f}">'
            f"<title>{escape(label)}: {escape(series.fmt(value))}</title></rect>"
        )
    if labels:
        parts.append(f'<text x="{LEFT}" y="{HEIGHT - 4}">{escape(labels[0])}</text>')
        parts.append(f'<text x="{WIDTH - 4}" y="{HEIGHT - 4}" text-anchor="end">{escape(labels[-1])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
