"""The plan's chart: cost against completion time, for the chosen mix and single-type fleets.

Each curve scales its fleet (× 0.25 … × 4): fewer nodes finish later, more finish sooner; the
deadline is a dashed line. matplotlib is the `bench` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fleetinfer.errors import MissingExtraError
from fleetinfer.plan.planner import Plan, scaled

FACTORS = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)


def curve(plan: Plan) -> list[tuple[float, float]]:
    """(completion h, cost $) of the plan's mix at each scale factor."""
    points = []
    for factor in FACTORS:
        fleet = scaled(plan, factor)
        points.append((fleet.completion_s / 3600.0, fleet.cost_usd))
    return points


def _minor_label(value: float, _position: int) -> str:
    """Label 2-8 × a power of ten; 9 would crowd the next major tick."""
    return "" if f"{value:g}".startswith("9") else f"{value:g}"


def write_plan_chart(plan: Plan, alternatives: Sequence[Plan], path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError as exc:
        raise MissingExtraError("matplotlib", "bench", "the plan's chart") from exc
    figure, axis = plt.subplots(figsize=(8, 5))
    hours, costs = zip(*curve(plan), strict=True)
    axis.plot(hours, costs, "o-", linewidth=2.5, color="black", label="chosen mix")
    for alternative in alternatives:
        hours, costs = zip(*curve(alternative), strict=True)
        axis.plot(hours, costs, ".--", linewidth=1, label=alternative.allocations[0].pool.name)
    axis.axvline(plan.request.deadline_s / 3600.0, color="red", linestyle=":", label="deadline")
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_formatter(ticker.FuncFormatter(_minor_label))
    axis.set_xlabel("completion time, h")
    axis.set_ylabel("expected cost, $")
    axis.set_title(
        f"{plan.request.backlog:,} tasks: cost vs completion time (each fleet scaled x0.25 to x4)"
    )
    axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
