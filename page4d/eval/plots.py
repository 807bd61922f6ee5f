"""Plots of an evaluation report: the main metrics per time step (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

from page4d.eval.geometry_metrics import EVAL_EXTRA

PANELS = (
    ("abs_rel", "depth AbsRel (median-aligned)"),
    ("delta_1.25", "depth δ < 1.25 (median-aligned)"),
    ("ate_rmse", "camera ATE (Sim(3)-aligned)"),
)


def require_matplotlib() -> None:
    """Raise ``ValueError`` telling how to install matplotlib if it is missing (call before long work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(f"the eval plots need matplotlib; {EVAL_EXTRA}") from None


def plot_per_step(report: dict, path: Path) -> Path:
    """Write ``path`` (PNG): AbsRel, δ < 1.25 and ATE against the time id, one panel each, from
    ``report["per_step"]`` (a report of :func:`page4d.eval.runner.evaluate`). Missing values leave gaps."""
    require_matplotlib()
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch and no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    per_step = report["per_step"]
    times = per_step["time_ids"]
    figure = Figure(figsize=(4.0 * len(PANELS), 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, (key, title) in zip(figure.subplots(1, len(PANELS)), PANELS, strict=True):
        values = [float("nan") if v is None else v for v in per_step[key]]
        axes.plot(times, values, marker="o")
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("time id")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    model = report["prediction"].get("model") or "prediction"
    untrained = " (UNTRAINED weights)" if report["prediction"].get("untrained") else ""
    figure.suptitle(f"{model}{untrained} vs {report['clip']}, protocol {report['protocol']['name']}", fontsize=10)
    figure.savefig(path, dpi=100)
    return path
