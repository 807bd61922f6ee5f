"""Figures of an evaluation (matplotlib Figure + Agg canvas: no pyplot, no global backend, no display needed):

- :func:`plot_per_step`: AbsRel, δ < 1.25 and ATE against the time id;
- :func:`plot_trajectories`: every camera's centre over time seen from above, prediction (Sim(3)-aligned as
  for the ATE) against ground truth;
- :func:`plot_depth_errors`: per time step, one column per view: image, median-aligned predicted depth,
  ground-truth depth and the per-pixel AbsRel.

What they draw comes from :mod:`page4d.eval.plot_data`; this module only lays it out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from page4d.eval.geometry_metrics import EVAL_EXTRA
from page4d.eval.plot_data import DepthErrors, camera_top_view, depth_errors
from page4d.eval.runner import Evaluation
from page4d.export.points import time_name

if TYPE_CHECKING:  # matplotlib is optional (the eval extra): imported where a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap

PANELS = (
    ("abs_rel", "depth AbsRel (median-aligned)"),
    ("delta_1.25", "depth δ < 1.25 (median-aligned)"),
    ("ate_rmse", "camera ATE (Sim(3)-aligned)"),
)
VIEW_COLORS = "tab10"
"""One colour per view (repeating after 10), the same in every figure."""
DEPTH_COLORMAP = "turbo"
"""As the depth row of ``page4d reconstruct``'s PNG panels, so the two read alike."""
ERROR_COLORMAP = "magma"
INVALID_COLOR = "0.6"
"""Pixels without ground truth: a neutral grey that neither colour map uses."""
TILE_WIDTH = 2.2
"""Inches per view column of the depth-error figure: 8 views stay under 2,000 pixels wide at 100 dpi."""
ERROR_ROWS = ("image", "predicted depth\n(× median scale)", "ground-truth depth", "|AbsRel| per pixel")


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
    figure.suptitle(_source(report), fontsize=10)
    figure.savefig(path, dpi=100)
    return path


def _source(report: dict) -> str:
    """What was compared with what: the suptitle every figure starts with."""
    model = report["prediction"].get("model") or "prediction"
    untrained = " (UNTRAINED weights)" if report["prediction"].get("untrained") else ""
    return f"{model}{untrained} vs {report['clip']}, protocol {report['protocol']['name']}"


def plot_trajectories(evaluation: Evaluation, path: Path) -> Path:
    """Write ``path`` (PNG): the camera centres of every (t, v) seen from above (:func:`camera_top_view`), one
    colour per view; ground truth solid with dots, prediction dashed with crosses, a ring on the first time
    step and an arrow head on the last, equal scale on both axes."""
    require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    report, recon = evaluation.report, evaluation.recon
    view = camera_top_view(torch.from_numpy(recon.extrinsic), evaluation.truth.extrinsic, evaluation.sim3)
    colors = colormaps[VIEW_COLORS]
    figure = Figure(figsize=(7.5, 6.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for v in range(recon.num_views):
        _track(axes, view.gt[:, v], colors(v % colors.N), "-", "o")
        if view.pred is not None:
            _track(axes, view.pred[:, v], colors(v % colors.N), "--", "x")
    axes.set_aspect("equal", adjustable="datalim")
    axes.grid(alpha=0.3)
    first = int(recon.view_ids[0])
    axes.set_xlabel(f"along view {first}'s right axis (GT units)")
    axes.set_ylabel(f"along view {first}'s viewing direction (GT units)")
    handles = [Line2D([], [], color=colors(v % colors.N), lw=3, label=f"view {int(view_id)}")
               for v, view_id in enumerate(recon.view_ids)]
    handles += [
        Line2D([], [], color="k", ls="-", marker="o", ms=4, label="ground truth"),
        Line2D([], [], color="k", ls="--", marker="x", ms=5, label="prediction (Sim(3)-aligned)"),
        Line2D([], [], color="k", ls="", marker="o", ms=10, mfc="none",
               label=f"first step (time {int(recon.time_ids[0])})"),
    ]
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    ate = report["cameras"]["ate_rmse"]
    detail = "prediction not drawn: no Sim(3) (see the notes)" if view.pred is None else f"ATE {ate:.4g}"
    figure.suptitle(f"{_source(report)}\ncamera centres seen from above, {detail}", fontsize=10)
    figure.savefig(path, dpi=100)
    return path


def _track(axes: Axes, points: np.ndarray, color: tuple, linestyle: str, marker: str) -> None:
    """One camera's centres ``points [T, 2]`` in time order, with a ring on the first and an arrow into the last
    (none for a camera that did not move: an arrow needs a direction)."""
    axes.plot(points[:, 0], points[:, 1], ls=linestyle, marker=marker, ms=4, lw=1.2, color=color)
    axes.plot(points[0, 0], points[0, 1], marker="o", ms=10, mfc="none", ls="", color=color)
    if len(points) >= 2 and not np.array_equal(points[-2], points[-1]):
        axes.annotate("", xy=points[-1], xytext=points[-2],
                      arrowprops={"arrowstyle": "-|>", "color": color, "ls": linestyle, "lw": 1.2})


def plot_depth_errors(evaluation: Evaluation, folder: Path) -> list[Path]:
    """Write ``folder/time_XX.png`` for every evaluated time step (``folder`` is created); returns the paths in
    time order.

    One figure per step, like ``page4d reconstruct``'s ``panels/time_XX.png``, so the two can be flipped through
    side by side; every step shares one depth range and one error range (:class:`DepthErrors`), so steps compare.
    A column per view, rows :data:`ERROR_ROWS`; pixels without ground truth are grey.
    """
    require_matplotlib()
    from matplotlib import colormaps

    recon, truth, report = evaluation.recon, evaluation.truth, evaluation.report
    scale = report["depth"]["median"]["fit"]["scale"]
    errors = depth_errors(recon.depth, truth.depth.numpy(), truth.valid.numpy(), scale)
    maps = {
        "depth": colormaps[DEPTH_COLORMAP].with_extremes(bad=INVALID_COLOR),
        "error": colormaps[ERROR_COLORMAP].with_extremes(bad=INVALID_COLOR),
    }
    folder.mkdir()
    paths = []
    for t in range(recon.num_times):
        path = folder / f"{time_name(recon, t)}.png"
        _depth_error_step(evaluation, errors, maps, t, path)
        paths.append(path)
    return paths


def _depth_error_step(evaluation: Evaluation, errors: DepthErrors, maps: dict[str, Colormap], t: int,
                      path: Path) -> None:
    """The depth-error figure of time step index ``t`` (see :func:`plot_depth_errors`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recon, report = evaluation.recon, evaluation.report
    views, (height, width) = recon.num_views, recon.size
    figure = Figure(figsize=(TILE_WIDTH * views + 1.6, TILE_WIDTH * height / width * len(ERROR_ROWS) + 1.0),
                    layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(ERROR_ROWS), views, squeeze=False)
    low, high = errors.depth_range
    for v, view_id in enumerate(recon.view_ids):
        grid[0, v].imshow(recon.images[t, v])
        grid[0, v].set_title(f"view {int(view_id)}", fontsize=9)
        depth = grid[1, v].imshow(errors.aligned[t, v], cmap=maps["depth"], vmin=low, vmax=high)
        grid[2, v].imshow(np.ma.masked_invalid(errors.gt[t, v]), cmap=maps["depth"], vmin=low, vmax=high)
        error = grid[3, v].imshow(np.ma.masked_invalid(errors.error[t, v]), cmap=maps["error"], vmin=0.0,
                                  vmax=errors.error_max)
        abs_rel = errors.view_abs_rel(t, v)
        grid[3, v].set_title("no ground truth" if abs_rel is None else f"AbsRel {abs_rel:.4f}", fontsize=8)
    for axes in grid.flat:
        axes.set_xticks([])
        axes.set_yticks([])
    for row, name in enumerate(ERROR_ROWS):
        grid[row, 0].set_ylabel(name, fontsize=9)
    figure.colorbar(depth, ax=grid[1:3, :], label="depth (GT units)", shrink=0.9)
    figure.colorbar(error, ax=grid[3, :], label="|pred·s − gt| / gt", extend="max")
    step = report["per_step"]["abs_rel"][t]
    summary = "no ground truth" if step is None else f"AbsRel {step:.4f}"
    scale = report["depth"]["median"]["fit"]["scale"]
    fit = "per image" if isinstance(scale, list) else f"= {scale:.4g}"
    figure.suptitle(f"{_source(report)}\ntime {int(recon.time_ids[t])}: {summary}, prediction × its median scale s "
                    f"{fit}; grey = no ground truth", fontsize=10)
    figure.savefig(path, dpi=100)
