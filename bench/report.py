"""What the benchmark suite writes: the comparisons against their targets, a table for the terminal, a JSON
file, a Markdown summary with the machine description, and the throughput plot (PNG)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .samples import Samples, fmt

MIB = 1 << 20


@dataclass(frozen=True)
class Comparison:
    """One line of the summary: kachery-cloud's figure next to a baseline's, or an absolute figure."""

    figure: str  # "1", "4a", ...
    what: str
    ours: Samples
    baseline: Samples | None
    target: float  # the ratio (ours / baseline) not to exceed, or the absolute value without a baseline
    stat: str = "median"  # or "p95"

    @property
    def value(self) -> float:
        ours = self.ours.stat(self.stat)
        return ours / self.baseline.stat(self.stat) if self.baseline is not None else ours

    @property
    def met(self) -> bool:
        return self.value <= self.target

    def target_text(self) -> str:
        return f"<= {self.target:g}" if self.baseline is not None else f"<= {self.target:g} {self.ours.unit}"

    def as_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "what": self.what,
            "stat": self.stat,
            "ours": self.ours.as_json(),
            "baseline": self.baseline.as_json() if self.baseline is not None else None,
            "ratio": self.value if self.baseline is not None else None,
            "value": self.value,
            "target": self.target,
            "met": self.met,
        }


def cell(samples: Samples, stat: str) -> str:
    if stat == "p95":
        return f"{fmt(samples.p95, samples.unit)} (p95, n={len(samples.values)})"
    if len(samples.values) == 1:
        return fmt(samples.median, samples.unit)
    return f"{fmt(samples.median, samples.unit)} ({samples.spread()}, n={len(samples.values)})"


def table_rows(comparisons: list[Comparison]) -> list[list[str]]:
    rows = [["#", "measure", "kachery-cloud", "baseline", "ratio", "target", "met"]]
    for c in comparisons:
        rows.append(
            [
                c.figure,
                c.what,
                cell(c.ours, c.stat),
                f"{c.baseline.label}: {cell(c.baseline, c.stat)}" if c.baseline is not None else "(absolute)",
                f"{c.value:.2f}" if c.baseline is not None else "",
                c.target_text(),
                "yes" if c.met else "NO",
            ]
        )
    return rows


def print_table(title: str, comparisons: list[Comparison]) -> None:
    rows = table_rows(comparisons)
    widths = [min(60, max(len(row[i]) for row in rows)) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for row in rows:
        print("  ".join(text[:60].ljust(width) for text, width in zip(row, widths, strict=True)))


def markdown_table(comparisons: list[Comparison]) -> str:
    rows = table_rows(comparisons)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    packages = {}
    for name in ("kachery-cloud", "boto3", "botocore", "requests", "urllib3", "nanio", "uvicorn", "fastapi"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": packages,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10)
    except OSError:
        return ""
    return done.stdout.strip()


def plot(curves: dict[str, dict[str, dict[int, Samples]]], path: Path) -> bool:
    """Throughput against file size, one panel per stack; False if matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    styles = {
        "store": ("kachery-cloud store_file", "tab:blue", "-"),
        "store_base": ("sha1 + boto3 upload_file", "tab:blue", "--"),
        "load": ("kachery-cloud load_file", "tab:orange", "-"),
        "load_base": ("boto3 download_file", "tab:orange", "--"),
    }
    figure, axes = plt.subplots(1, len(curves), figsize=(7 * len(curves), 5), squeeze=False)
    for ax, (stack_name, curve) in zip(axes[0], curves.items(), strict=True):
        for name, (label, color, line) in styles.items():
            sizes = sorted(curve[name])
            ax.plot(sizes, [curve[name][s].median for s in sizes], line, color=color, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({s for c in curve.values() for s in c})
        ax.set_xticks(ticks, [_size_label(s) for s in ticks])
        ax.set_xlabel("file size")
        ax.set_ylabel("MiB/s (median)")
        ax.set_title(stack_name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _size_label(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size // factor} {unit}"
    return f"{size} B"


def write_outputs(
    out_dir: Path,
    command: str,
    stacks: dict[str, list[Comparison]],
    curves: dict[str, dict[str, dict[int, Samples]]],
    extra: dict[str, dict[str, Samples]],
    notes: dict[str, list[str]],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    data = {
        "command": command,
        "machine": info,
        "stacks": {
            name: {
                "comparisons": [c.as_json() for c in comparisons],
                "curve": {k: {str(s): v.as_json() for s, v in c.items()} for k, c in curves.get(name, {}).items()},
                "other": {k: v.as_json() for k, v in extra.get(name, {}).items()},
                "notes": notes.get(name, []),
            }
            for name, comparisons in stacks.items()
        },
    }
    (out_dir / "summary.json").write_text(json.dumps(data, indent=1) + "\n")
    has_plot = bool(curves) and plot(curves, out_dir / "throughput.png")
    lines = [
        "# kachery-cloud performance summary",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['os']}, "
        f"Python {info['python']}; commit {info['commit']}"
        + (" (with uncommitted changes)" if info["uncommitted_changes"] else "")
        + ".",
        "",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()) + ".",
        "",
        "Ratios are kachery-cloud / baseline of the medians (p95 where marked); lower is better. In brackets: "
        "min-max over the repetitions, and their number. Client, API server and S3 server share the machine.",
    ]
    for name, comparisons in stacks.items():
        lines += ["", f"## {name}", "", markdown_table(comparisons)]
        if extra.get(name):
            lines += ["", "Other figures of this run:", ""]
            lines += [f"- {s.label}: {cell(s, 'median')}" for s in extra[name].values()]
        if notes.get(name):
            lines += ["", *[f"- {note}" for note in notes[name]]]
    if has_plot:
        lines += ["", "## Throughput against file size", "", "![throughput](throughput.png)"]
    bounds = Path(__file__).with_name("bounds.md")  # the hand-written analysis of the targets still missed
    if bounds.exists():
        lines += ["", bounds.read_text().rstrip()]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
