"""Evaluation protocols: which pixels are compared, how predictions are aligned and how values are pooled.

**Comparison grid (every protocol): the model-input grid.** The ground-truth depth and masks are resampled
onto the ``(H, W)`` grid of the predictions with ``resample_to_model``: every model pixel takes the original
pixel its centre maps back to (nearest, the map that also adjusts K), so each predicted value is compared with
one measured value and nothing is interpolated across depth edges. Original pixels the pre-processing
removed (crop mode's cropped rows) have no prediction and are not evaluated; model pixels in padding have no
ground truth and are not evaluated either. This replaces sampling the prediction at every original pixel:
that sampling (``map_pixels`` + nearest) scores a third of the original pixels at 640×480 → 518×392 against a
predicted pixel that stands for a neighbour, and bilinear sampling invents depths across occlusion
boundaries, so both would give a perfect prediction a non-zero error. Consequence: models run at different
input sizes are scored on different pixel sets (the same for the default 518 pre-processing).

**Valid pixels**: ground-truth depth finite and > 0 and, with a cap, ≤ ``max_depth`` (GT units). The
dynamic region is the ground-truth mask (non-zero = moving), the static region its complement.

**Depth** (``--protocol``): AbsRel and δ < 1.25 after a median scale and, separately, after a least-squares
scale & shift (``depth_metrics``), fitted on all valid pixels of the fitting unit and then applied unchanged
to the all / static / dynamic regions and to every time step:

- ``video-depth``: one fit per clip (MonST3R / CUT3R / Pi3 video depth: tests temporal scale consistency);
- ``per-frame``: one fit per (t, v) image (single-image depth: forgives scale drift between frames).

Values are pooled over the pixels of the clip (per step: over that step's pixels).

**Cameras** (every protocol): one Sim(3) (Umeyama, prediction → ground truth) on the centres of all T·V
cameras, so a static rig (the same centre at every step) still constrains it through its V views. ATE = RMSE
of the aligned centres over all T·V cameras (per step: over the V cameras of the step). RPE = error of the
motion of each camera between consecutive time steps (its trajectory over time), predicted translations
scaled by the Sim(3) scale, averaged over views. Pose AUC@{3, 5, 30} (VGGT) over the V·(V−1) ordered view
pairs of each time step (relative poses need no alignment), averaged over steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from page4d.eval.metrics import camera_centres, depth_metrics, pose_auc, relative_pose_error
from page4d.geometry.alignment import umeyama_sim3

Protocol = Literal["video-depth", "per-frame"]
PROTOCOLS: dict[str, str] = {
    "video-depth": "depth aligned once per clip (median scale; least-squares scale & shift), pooled over the clip",
    "per-frame": "depth aligned once per (t, v) image (median scale; least-squares scale & shift), pooled over "
    "the clip",
}
GRID = (
    "model-input grid: GT depth and masks resampled to the predictions' (H, W) by nearest original pixel "
    "(resample_to_model); cropped original pixels and padded model pixels are not evaluated"
)
CAMERAS = (
    "one Sim(3) (Umeyama) on all T*V camera centres; ATE over all T*V cameras; RPE over consecutive time steps of "
    "each view; AUC over the ordered view pairs of each time step, averaged over steps"
)
DEPTH_ALIGNMENTS = ("median", "scale_shift")
AUC_THRESHOLDS = (3, 5, 30)


@dataclass(frozen=True)
class Sim3:
    """A similarity ``x ↦ s·R·x + t`` from the predicted world to the ground-truth world."""

    scale: float
    rotation: torch.Tensor
    """``[3, 3]`` float64."""
    translation: torch.Tensor
    """``[3]`` float64."""

    def to_json(self) -> dict:
        return {"scale": self.scale, "rotation": self.rotation.tolist(), "translation": self.translation.tolist()}


def align_depth(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, protocol: Protocol, align: str
) -> tuple[torch.Tensor, dict]:
    """Aligned prediction ``[T, V, H, W]`` (float64) and the fit ``{"scale", "shift"}``: floats for ``video-depth``,
    ``[T][V]`` lists for ``per-frame`` (None for an image without valid pixels, left unaligned)."""
    if protocol == "video-depth":
        fit = depth_metrics(pred, gt, valid, align=align)
        return fit["scale"] * pred.double() + fit["shift"], {"scale": fit["scale"], "shift": fit["shift"]}
    if protocol != "per-frame":
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    aligned = pred.double().clone()
    steps, views = pred.shape[:2]
    scales: list[list[float | None]] = [[None] * views for _ in range(steps)]
    shifts: list[list[float | None]] = [[None] * views for _ in range(steps)]
    for t in range(steps):
        for v in range(views):
            if valid[t, v].any():
                fit = depth_metrics(pred[t, v], gt[t, v], valid[t, v], align=align)
                aligned[t, v] = fit["scale"] * aligned[t, v] + fit["shift"]
                scales[t][v], shifts[t][v] = fit["scale"], fit["shift"]
    return aligned, {"scale": scales, "shift": shifts}


def _scores(pred: torch.Tensor, gt: torch.Tensor, region: torch.Tensor) -> dict[str, float] | None:
    """AbsRel and δ < 1.25 of an already aligned ``pred`` on ``region``; None if the region is empty."""
    if not region.any():
        return None
    scores = depth_metrics(pred, gt, region, align="none")
    return {"abs_rel": scores["abs_rel"], "delta_1.25": scores["delta_1.25"]}


def depth_report(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, dynamic: torch.Tensor | None, protocol: Protocol
) -> dict:
    """Depth section of the report for ``pred, gt, valid [T, V, H, W]`` and the GT ``dynamic [T, V, H, W]`` mask
    (None: no static / dynamic split). One entry per alignment with all / static / dynamic scores (None where a
    region is empty), the fit, and per-step all-pixel scores."""
    regions = {"all": valid}
    if dynamic is not None:
        regions |= {"static": valid & ~dynamic, "dynamic": valid & dynamic}
    report: dict = {"pixels": {name: int(region.sum()) for name, region in regions.items()}}
    for align in DEPTH_ALIGNMENTS:
        aligned, fit = align_depth(pred, gt, valid, protocol, align)
        section = {
            name: _scores(aligned, gt, regions[name]) if name in regions else None
            for name in ("all", "static", "dynamic")
        }
        steps = [_scores(aligned[t], gt[t], valid[t]) for t in range(len(pred))]
        section["per_step"] = {
            key: [None if step is None else step[key] for step in steps] for key in ("abs_rel", "delta_1.25")
        }
        section["fit"] = fit
        report[align] = section
    return report


def _trajectory_problem(pred_centres: torch.Tensor, gt_centres: torch.Tensor) -> str | None:
    """Why no Sim(3) can be fitted to camera centres ``[N, 3]``, or None."""
    if len(gt_centres) < 3:
        return f"a Sim(3) needs at least 3 cameras, got {len(gt_centres)}"
    for name, centres in (("ground-truth", gt_centres), ("predicted", pred_centres)):
        if bool((centres == centres[0]).all()):
            return f"all {name} camera centres coincide, so no Sim(3) can be fitted"
    return None


def camera_report(pred_w2c: torch.Tensor, gt_w2c: torch.Tensor) -> tuple[dict, Sim3 | None, list[str]]:
    """Camera section for world-to-camera ``pred_w2c, gt_w2c [T, V, 3, 4]``: the report (None for what cannot be
    computed), the prediction → GT Sim(3) (None if degenerate) and notes saying why values are missing."""
    steps, views = gt_w2c.shape[:2]
    pred, gt = pred_w2c.double(), gt_w2c.double()
    pred_centres, gt_centres = camera_centres(pred).flatten(0, 1), camera_centres(gt).flatten(0, 1)
    report: dict = {"sim3": None, "ate_rmse": None, "rpe_trans": None, "rpe_rot_deg": None}
    report |= {f"auc@{tau}": None for tau in AUC_THRESHOLDS}
    per_step: dict = {"ate_rmse": [None] * steps, "auc@30": [None] * steps}
    notes, sim3 = [], None

    problem = _trajectory_problem(pred_centres, gt_centres)
    if problem is None:
        sim3 = Sim3(*umeyama_sim3(pred_centres, gt_centres))
        residual = (sim3.scale * pred_centres @ sim3.rotation.T + sim3.translation - gt_centres).square().sum(-1)
        report |= {"sim3": sim3.to_json(), "ate_rmse": math.sqrt(float(residual.mean()))}
        per_step["ate_rmse"] = [math.sqrt(float(r)) for r in residual.view(steps, views).mean(dim=1)]
        if steps >= 2:
            rpe = [relative_pose_error(pred[:, v], gt[:, v], sim3.scale) for v in range(views)]
            report |= {key: sum(r[key] for r in rpe) / views for key in ("rpe_trans", "rpe_rot_deg")}
        else:
            notes.append("cameras: RPE needs at least 2 time steps")
    else:
        notes.append(f"cameras: no ATE / RPE / point alignment: {problem}")

    if views >= 2:
        aucs = [pose_auc(pred[t], gt[t], thresholds=AUC_THRESHOLDS) for t in range(steps)]
        report |= {key: sum(a[key] for a in aucs) / steps for key in aucs[0]}
        per_step["auc@30"] = [a["auc@30"] for a in aucs]
    else:
        notes.append("cameras: pose AUC needs at least 2 views per time step")
    report["per_step"] = per_step
    return report, sim3, notes
