"""``page4d eval CLIP PREDICTIONS [-o REPORT_DIR]``: score a reconstruction against a clip's ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from page4d.cli.summary import file_span
from page4d.data.layout import load_clip
from page4d.eval.plots import plot_depth_errors, plot_per_step, plot_trajectories, require_matplotlib
from page4d.eval.protocols import PROTOCOLS
from page4d.eval.runner import run_evaluation
from page4d.reconstruction.record import Reconstruction
from page4d.transaction import OutputFolder

METRICS = "metrics.json"
PLOT = "per_step.png"
TRAJECTORIES = "trajectories.png"
DEPTH_ERRORS = "depth_error"
"""Folder of the depth-error figures, ``time_XX.png`` per time step (as ``page4d reconstruct``'s ``panels/``)."""


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "eval",
        help="score predictions against a clip's ground truth (depth, cameras, points, masks, consistency)",
        description=(
            "Compare the output folder of `page4d reconstruct` with the ground truth of the clip it was made from "
            "(depths/, cameras.json, optional masks/) on the (time, view) ids both have. Writes REPORT_DIR/"
            f"{METRICS} (every number, the protocol, the model and whether its weights were trained) and "
            f"REPORT_DIR/{PLOT} (AbsRel, δ<1.25 and ATE per time step), REPORT_DIR/{TRAJECTORIES} (camera centres "
            "seen from above, prediction Sim(3)-aligned as for the ATE, against the ground truth) and "
            f"REPORT_DIR/{DEPTH_ERRORS}/time_XX.png (per time step and view: image, median-aligned predicted depth, "
            "ground-truth depth, per-pixel AbsRel), and prints a summary table. Depth and masks are compared on the "
            "predictions' model-input grid (GT resampled by nearest pixel)."
        ),
    )
    p.add_argument("clip", type=Path, help="clip folder with ground truth: images/, depths/, cameras.json "
                   "(+ masks/ for the static / dynamic split and the mask metrics)")
    p.add_argument("predictions", type=Path, help="output folder of page4d reconstruct (predictions.npz, meta.json)")
    p.add_argument("-o", "--output", type=Path,
                   help="report folder (created; must be empty; default: PREDICTIONS/eval, the only place inside an "
                   "input it may be)")
    p.add_argument(
        "--protocol", choices=tuple(PROTOCOLS), default="video-depth",
        help="depth alignment: " + "; ".join(f"{name} = {text}" for name, text in PROTOCOLS.items())
        + " (default: video-depth). Cameras and points use one Sim(3) per clip either way",
    )
    p.add_argument("--max-depth", type=float,
                   help="ignore ground-truth depth beyond this, in GT units, for every metric (default: no cap)")
    p.add_argument("--overwrite", action="store_true", help="replace REPORT_DIR if it exists and is not empty")
    p.set_defaults(run=run)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _rows(report: dict) -> list[tuple[str, list[str]]]:
    """(label, cells) of the summary table."""
    depth, cameras, points = report["depth"], report["cameras"], report["points"]
    rows = [("depth (regions)", ["all", "static", "dynamic"])]
    for align, name in (("median", "median"), ("scale_shift", "scale&shift")):
        for key, label in (("abs_rel", "AbsRel"), ("delta_1.25", "δ<1.25")):
            scores = [depth[align][region] for region in ("all", "static", "dynamic")]
            cells = [_fmt(None if s is None else s[key]) for s in scores]
            rows.append((f"depth {label}, {name}", cells))
    rows.append(("camera ATE RMSE", [_fmt(cameras["ate_rmse"])]))
    rows.append(("camera RPE trans / rot (deg)", [_fmt(cameras["rpe_trans"]), _fmt(cameras["rpe_rot_deg"])]))
    rows.append(("pose AUC@3 / @5 / @30", [_fmt(cameras[f"auc@{tau}"]) for tau in (3, 5, 30)]))
    for source, label in (("depth", "depth"), ("point_head", "point head")):
        scores = points[source]
        cells = [_fmt(None if scores is None else scores[k]) for k in ("accuracy", "completeness", "chamfer")]
        rows.append((f"points acc / comp / Chamfer ({label})", cells))
    mask = report["dynamic_mask"]
    if mask is None:
        reason = [n.split(": ", 1)[1] for n in report["notes"] if n.startswith("dynamic mask:")]
        rows.append(("dynamic mask IoU / F1", reason))
    else:
        rows.append(("dynamic mask IoU / F1", [_fmt(mask["iou"]), _fmt(mask["f1"])]))
    consistency = report["consistency"]
    if consistency is not None:
        pred, gt = consistency["prediction"], consistency["ground_truth"]
        rows.append(("consistency |rel|<1% pred / GT", [_fmt(pred["within"]), _fmt(gt["within"])]))
        rows.append(("consistency median |rel| pred / GT", [_fmt(pred["median_abs_rel"]), _fmt(gt["median_abs_rel"])]))
    return rows


def format_table(report: dict) -> str:
    """The short aligned text summary of a report printed by ``page4d eval``."""
    pred, evaluated = report["prediction"], report["evaluated"]
    height, width = evaluated["model_size"]
    protocol = report["protocol"]
    lines = [
        f"prediction: {pred.get('model')}" + (" — UNTRAINED weights: the numbers test the pipeline, not a model"
                                              if pred["untrained"] else ""),
        f"clip: {report['clip']}, {len(evaluated['time_ids'])} time steps × {len(evaluated['view_ids'])} views at "
        f"{width}×{height}, protocol {protocol['name']}, max depth {protocol['max_depth'] or 'none'}",
    ]
    rows = _rows(report)
    label_width = max(len(label) for label, _ in rows)
    # Single-cell rows (a reason instead of numbers) may be wider than the number columns.
    cell_width = max(len(cell) for _, cells in rows if len(cells) > 1 for cell in cells)
    lines += [f"{label:<{label_width}}  " + "  ".join(f"{c:>{cell_width}}" for c in cells) for label, cells in rows]
    lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    default = args.predictions / "eval"
    out = args.output if args.output is not None else default
    claim = OutputFolder(out, overwrite=args.overwrite, inputs=[args.clip, args.predictions], allowed=[default])
    require_matplotlib()
    with claim as output:
        recon = Reconstruction.load(args.predictions)
        evaluation = run_evaluation(load_clip(args.clip), recon, protocol=args.protocol, max_depth=args.max_depth)
        report = evaluation.report
        report["prediction"]["folder"] = str(args.predictions)
        # allow_nan=False: a NaN would make the file unreadable for strict JSON parsers; fail loudly instead.
        (output.path / METRICS).write_text(json.dumps(report, indent=1, allow_nan=False))
        plot_per_step(report, output.path / PLOT)
        plot_trajectories(evaluation, output.path / TRAJECTORIES)
        maps = [p.relative_to(output.path) for p in plot_depth_errors(evaluation, output.path / DEPTH_ERRORS)]
    print(format_table(report))
    # Printed once the report is in place, with the final paths (the files were written into a temporary folder).
    print(f"report: {out / METRICS}")
    print(f"errors per time step: {out / PLOT}")
    print(f"camera centres seen from above: {out / TRAJECTORIES}")
    print(f"per-pixel depth errors: {file_span(out, maps)}")
    return 0
