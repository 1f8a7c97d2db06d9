"""The benchmark's chart: tasks/min (against the limit) and node PSS, one bar per mode (PNG).

matplotlib is the `bench` extra; without it, `write_chart` raises `MissingExtraError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetinfer.errors import MissingExtraError

PANELS = (
    ("tasks_per_min", "tasks/min (median over rounds)"),
    ("node_pss_mib", "node PSS, MiB (steady, median)"),
    ("efficiency", "efficiency = steady tasks/min ÷ limit"),
)


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _draw_limit(axis: Any, limit: float, highest: float) -> None:
    """A dashed line at the limit, or a note when it is far above the bars (tiny tasks)."""
    if highest > 0 and limit > 3 * highest:
        axis.set_xlabel(f"limit {_number(limit)} tasks/min (off scale)", fontsize=8)
        return
    axis.axhline(limit, color="black", linestyle="--", linewidth=1)
    axis.annotate(f"limit {_number(limit)}", (0, limit), va="bottom", fontsize=8)


def write_chart(report: dict[str, Any], path: Path) -> Path:
    """Draw the modes of `report` side by side into `path` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("matplotlib", "bench", "the benchmark chart (bench.png)") from exc
    modes = report["modes"]
    names = list(modes)
    figure, axes = plt.subplots(1, len(PANELS), figsize=(5.0 * len(PANELS), 4.2))
    for axis, (key, title) in zip(axes, PANELS, strict=True):
        values = [0.0 if "error" in modes[m] else float(modes[m][key]) for m in names]
        bars = axis.bar(
            names, values, color=["#9aa5b1", "#e07b39", "#2b8a3e", "#5c7cfa"][: len(names)]
        )
        for bar, name, value in zip(bars, names, values, strict=True):
            label = "not run" if "error" in modes[name] else _number(value)
            axis.annotate(
                label, (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom"
            )
        if key == "tasks_per_min":
            _draw_limit(axis, report["limit"]["tasks_per_min"], max(values, default=0.0))
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelrotation=20, labelsize=8)
    settings = report["bench"]
    figure.suptitle(
        f"fleetinfer bench {settings['target']}: {settings['tasks']} tasks, "
        f"{settings['workers']} workers, {settings['rounds']} rounds, "
        f"{report['machine']['cores']:g} cores",
        fontsize=11,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
