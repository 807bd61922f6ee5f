"""``evaluate``: score a :class:`Reconstruction` against the ground truth of a clip; returns a JSON-ready report.

Depth and cameras follow :mod:`page4d.eval.protocols` (comparison grid, alignment, pooling). The other
sections, on the same grid and valid pixels:

- **points**: per time step, the points of the V views at valid GT pixels (predicted from the depth head
  unprojected with the predicted cameras, and from the point head), mapped into the GT world by the camera
  Sim(3), against the GT depth unprojected with the GT cameras; at most ``max_points`` evenly spaced pixels
  per step (the same pixels on both sides); accuracy / completeness / Chamfer averaged over steps. Where the
  cameras give no Sim(3) (e.g. one static camera), a Sim(3) fitted on the depth-point pairs is used instead.
- **dynamic mask**: IoU and F1 of ``dynamic_mask > 0.5`` against the GT masks over the model pixels that
  come from the original image, pooled over the clip; None for a prediction without a mask head.
- **consistency**: :func:`multiview_consistency` (1 % threshold) of the predicted depth and cameras on the
  valid GT pixels, next to the same number for the ground truth itself (its ceiling: occlusions and
  sensor noise keep it below 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from page4d.data.clip import MultiViewClip
from page4d.data.preprocess import ImageTransform, resample_to_model
from page4d.data.sources import select_views
from page4d.eval.geometry_metrics import multiview_consistency, point_cloud_metrics, sim3_points, subsample_indices
from page4d.eval.metrics import mask_metrics
from page4d.eval.protocols import CAMERAS, GRID, PROTOCOLS, Protocol, Sim3, camera_report, depth_report
from page4d.geometry.alignment import umeyama_sim3
from page4d.geometry.unprojection import unproject_depth
from page4d.reconstruction.record import Reconstruction

REPORT_FORMAT = "page4d eval v1"
DEFAULT_MAX_POINTS = 20_000
CONSISTENCY_THRESHOLD = 0.01
POINTS = (
    "per time step: points at valid GT pixels (<= max_points evenly spaced, same pixels both sides), prediction "
    "mapped by the camera Sim(3); accuracy = mean pred->GT nearest distance, completeness = GT->pred, "
    "chamfer = their mean; averaged over steps"
)
MASK = "IoU / F1 of dynamic_mask > 0.5 vs GT masks over model pixels inside the original image, pooled"
CONSISTENCY = (
    "per time step and ordered view pair: valid pixels of view a reprojected into view b (nearest pixel); "
    "rel = (z_ab - d_b) / d_b; within = share with |rel| < 1 %, median |rel|; overlap = evaluated / source pixels"
)


@dataclass
class GroundTruth:
    """A clip's ground truth for the evaluated (time, view) ids on the model-input grid."""

    depth: torch.Tensor
    """``[T, V, H, W]`` float32 z-depth, 0 where nothing was measured."""
    valid: torch.Tensor
    """``[T, V, H, W]`` bool: finite depth > 0 (and ≤ max_depth)."""
    inside: torch.Tensor
    """``[V, H, W]`` bool: model pixels that come from each view's original image (not padding)."""
    dynamic: torch.Tensor | None
    """``[T, V, H, W]`` bool, True = moving; None when the clip has no masks."""
    extrinsic: torch.Tensor
    """``[T, V, 3, 4]`` float32 world-to-camera."""
    intrinsic: torch.Tensor
    """``[T, V, 3, 3]`` float32 K at the model-input resolution."""


def match_ids(clip: MultiViewClip, recon: Reconstruction) -> tuple[list[int], list[int], list[int], list[int]]:
    """Positions of the common time ids in the clip and in ``recon``, then the same for view ids (clip order)."""
    pred_times, pred_views = [int(t) for t in recon.time_ids], [int(v) for v in recon.view_ids]
    times = [t for t in clip.time_ids if t in pred_times]
    views = [v for v in clip.view_ids if v in pred_views]
    if not times or not views:
        raise ValueError(
            f"the clip ({clip.root}: time ids {clip.time_ids}, view ids {clip.view_ids}) and the predictions "
            f"(time ids {pred_times}, view ids {pred_views}) have no (time, view) in common; evaluate the "
            "predictions made from this clip"
        )
    return (
        [clip.time_ids.index(t) for t in times], [pred_times.index(t) for t in times],
        [clip.view_ids.index(v) for v in views], [pred_views.index(v) for v in views],
    )


def load_truth(
    clip: MultiViewClip, transforms: list[ImageTransform], times: list[int], views: list[int],
    max_depth: float | None,
) -> GroundTruth:
    """The ground truth at clip positions ``times`` × ``views`` resampled onto the model grid of ``transforms``
    (one per evaluated view)."""
    clip = select_views(clip, views)
    depth = clip.load_depths(transforms)[times]
    valid = torch.isfinite(depth) & (depth > 0)
    if max_depth is not None:
        valid &= depth <= max_depth
    inside = np.stack([resample_to_model(np.ones(t.original_size, dtype=bool), t) for t in transforms])
    dynamic = clip.load_masks(transforms)[times] if clip.mask_paths is not None else None
    return GroundTruth(
        depth=depth, valid=valid, inside=torch.from_numpy(inside), dynamic=dynamic,
        extrinsic=clip.extrinsics[times], intrinsic=clip.model_intrinsics(transforms)[times],
    )


def select(recon: Reconstruction, times: list[int], views: list[int]) -> Reconstruction:
    """``recon`` restricted to positions ``times`` × ``views``."""
    rows = np.ix_(times, views)
    arrays = {
        name: getattr(recon, name)[rows] for name in recon.ARRAYS
        if name not in ("time_ids", "view_ids") and getattr(recon, name) is not None
    }
    meta = {**recon.meta, "transforms": [recon.meta["transforms"][v] for v in views]}
    return dataclasses.replace(recon, time_ids=recon.time_ids[times], view_ids=recon.view_ids[views], meta=meta,
                               **arrays)


def point_report(
    recon: Reconstruction, truth: GroundTruth, sim3: Sim3 | None, max_points: int
) -> tuple[dict, list[str]]:
    """Point-cloud section (see the module docstring) and its notes."""
    clouds = {
        "gt": unproject_depth(truth.depth, truth.extrinsic, truth.intrinsic),
        "depth": torch.from_numpy(recon.depth_points()),
        "point_head": torch.from_numpy(recon.world_points),
    }
    steps = [t for t in range(len(truth.depth)) if truth.valid[t].any()]
    picks = {t: subsample_indices(int(truth.valid[t].sum()), max_points) for t in steps}
    # The same subsampled pixels on every side: ``sampled[name][t]`` is ``[N_t, 3]``.
    sampled = {name: {t: cloud[t][truth.valid[t]][picks[t]] for t in steps} for name, cloud in clouds.items()}
    notes, alignment = [], "camera Sim(3)"
    if sim3 is None:
        alignment = "Sim(3) fitted on the depth points"
        notes.append("points: the cameras give no Sim(3); the prediction is aligned on its depth points instead")
        sim3 = Sim3(*umeyama_sim3(torch.cat(list(sampled["depth"].values())), torch.cat(list(sampled["gt"].values()))))
    report: dict = {"alignment": alignment, "max_points": max_points}
    per_step: dict[str, list[dict | None]] = {}
    for name in ("depth", "point_head"):
        per_step[name] = [None] * len(truth.depth)
        for t in steps:
            pred = sim3_points(sampled[name][t], sim3.scale, sim3.rotation, sim3.translation)
            per_step[name][t] = point_cloud_metrics(pred, sampled["gt"][t])
        scored = [step for step in per_step[name] if step is not None]
        report[name] = {key: sum(step[key] for step in scored) / len(scored) for key in scored[0]}
    report["per_step"] = {"chamfer": [None if step is None else step["chamfer"] for step in per_step["depth"]]}
    return report, notes


def mask_report(recon: Reconstruction, truth: GroundTruth) -> tuple[dict | None, list[str]]:
    """Dynamic-mask section (None with a note when the prediction or the clip has no mask)."""
    if recon.dynamic_mask is None:
        return None, ["dynamic mask: no mask head"]
    if truth.dynamic is None:
        return None, ["dynamic mask: the clip has no masks/ folder"]
    pred = torch.from_numpy(recon.dynamic_mask)
    inside = truth.inside[None].expand_as(truth.dynamic)
    report = mask_metrics(pred[inside], truth.dynamic[inside])
    steps = zip(pred, truth.dynamic, inside, strict=True)
    report["per_step"] = {"iou": [mask_metrics(p[i], g[i])["iou"] for p, g, i in steps]}
    return report, []


def consistency_report(recon: Reconstruction, truth: GroundTruth) -> tuple[dict | None, list[str]]:
    """Multi-view consistency of the prediction and, as its ceiling, of the ground truth (V ≥ 2)."""
    if truth.depth.shape[1] < 2:
        return None, ["consistency: needs at least 2 views"]
    pred = multiview_consistency(
        torch.from_numpy(recon.depth), torch.from_numpy(recon.extrinsic), torch.from_numpy(recon.intrinsic),
        truth.valid, CONSISTENCY_THRESHOLD,
    )
    gt = multiview_consistency(truth.depth, truth.extrinsic, truth.intrinsic, truth.valid, CONSISTENCY_THRESHOLD)
    return {"prediction": pred, "ground_truth": gt}, []


def _check_inputs(clip: MultiViewClip, recon: Reconstruction, protocol: str, max_depth: float | None) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if max_depth is not None and not max_depth > 0:
        raise ValueError(f"max_depth must be positive (ground-truth units), got {max_depth}")
    parts = {"depths/": clip.depth_paths, "cameras.json": clip.extrinsics}
    missing = [name for name, part in parts.items() if part is None]
    if missing:
        raise ValueError(
            f"{clip.root}: the clip has no {' and no '.join(missing)}; evaluation needs the ground truth: "
            "depths/ and cameras.json"
        )
    clip_sizes = dict(zip(clip.view_ids, clip.image_sizes, strict=True))
    for view_id, transform in zip(recon.view_ids, recon.transforms, strict=True):
        height, width = transform.original_size
        if int(view_id) in clip_sizes and clip_sizes[int(view_id)] != (height, width):
            clip_h, clip_w = clip_sizes[int(view_id)]
            raise ValueError(
                f"the predictions of view{view_id} were made from {width}x{height} images (meta transforms) but the "
                f"clip's images are {clip_w}x{clip_h}; evaluate against the clip the predictions came from"
            )
        if tuple(transform.output_size) != recon.size:
            raise ValueError(f"meta transforms output_size {transform.output_size} differs from the depth maps "
                             f"{recon.size}; re-run page4d reconstruct")


def _check_finite_depth(recon: Reconstruction, truth: GroundTruth) -> None:
    """``ValueError`` naming the images whose predicted depth is NaN or infinite where the ground truth has depth:
    no alignment or score is defined there, and dropping those pixels would score the prediction on what it got."""
    bad = ~np.isfinite(recon.depth) & truth.valid.numpy()
    if bad.any():
        steps, views = np.nonzero(bad.any((2, 3)))
        images = [f"time {int(recon.time_ids[t])} view{int(recon.view_ids[v])}"
                  for t, v in zip(steps, views, strict=True)]
        raise ValueError(f"the predicted depth is NaN or infinite at {int(bad.sum())} pixels with ground truth, in "
                         f"{len(images)} image(s): {', '.join(images[:6])}{' …' if len(images) > 6 else ''}; the "
                         "model failed there: re-run page4d reconstruct (another model, or without those frames)")


def report_value(report: dict, path: tuple[str, ...]) -> float | None:
    """The number at ``path`` in an ``evaluate`` report (e.g. ``("depth", "median", "all", "abs_rel")``), None
    where a section does not apply."""
    value = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return None if value is None else float(value)


@dataclass
class Evaluation:
    """What :func:`run_evaluation` computed: the report and the arrays its figures draw."""

    report: dict
    """The JSON-ready report (:func:`evaluate`)."""
    recon: Reconstruction
    """The prediction restricted to the evaluated (time, view) ids, in the clip's order."""
    truth: GroundTruth
    """The ground truth of the same ids on the prediction's grid."""
    sim3: Sim3 | None
    """Prediction → ground-truth similarity fitted on the camera centres (the ATE's); None where it cannot be."""


def evaluate(
    clip: MultiViewClip,
    recon: Reconstruction,
    protocol: Protocol = "video-depth",
    max_depth: float | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> dict:
    """Every metric of ``recon`` against ``clip``'s ground truth, on the (time, view) ids both have.

    ``max_depth`` caps the ground-truth depth (GT units; None: no cap) for every section. Returns a
    JSON-ready dict: protocol descriptions, what was evaluated, one section per metric family (None where
    it does not apply, with the reason in ``notes``) and ``per_step`` values for the plots.
    """
    return run_evaluation(clip, recon, protocol, max_depth, max_points).report


def run_evaluation(
    clip: MultiViewClip,
    recon: Reconstruction,
    protocol: Protocol = "video-depth",
    max_depth: float | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> Evaluation:
    """:func:`evaluate`, keeping the evaluated prediction, its ground truth and the camera Sim(3) next to the
    report (what the figures of :mod:`page4d.eval.plots` draw)."""
    _check_inputs(clip, recon, protocol, max_depth)
    clip_t, pred_t, clip_v, pred_v = match_ids(clip, recon)
    recon = select(recon, pred_t, pred_v)
    truth = load_truth(clip, recon.transforms, clip_t, clip_v, max_depth)
    if not truth.valid.any():
        raise ValueError(f"{clip.root}: no valid ground-truth depth at the evaluated pixels; check depths/ and "
                         "--max-depth")
    _check_finite_depth(recon, truth)
    depth = depth_report(torch.from_numpy(recon.depth), truth.depth, truth.valid, truth.dynamic, protocol)
    cameras, sim3, notes = camera_report(torch.from_numpy(recon.extrinsic), truth.extrinsic)
    points, point_notes = point_report(recon, truth, sim3, max_points)
    mask, mask_notes = mask_report(recon, truth)
    consistency, consistency_notes = consistency_report(recon, truth)
    per_step = {
        "time_ids": [int(t) for t in recon.time_ids],
        "abs_rel": depth["median"]["per_step"]["abs_rel"],
        "delta_1.25": depth["median"]["per_step"]["delta_1.25"],
        "ate_rmse": cameras["per_step"]["ate_rmse"],
        "chamfer": points["per_step"]["chamfer"],
        "mask_iou": None if mask is None else mask["per_step"]["iou"],
        "consistency_within": None if consistency is None else consistency["prediction"]["per_step"]["within"],
    }
    report = {
        "format": REPORT_FORMAT,
        "clip": str(clip.root),
        "prediction": {k: recon.meta.get(k) for k in ("model", "weights")} | {"untrained": recon.untrained},
        "protocol": {
            "name": protocol, "depth": PROTOCOLS[protocol], "grid": GRID, "cameras": CAMERAS, "points": POINTS,
            "dynamic_mask": MASK, "consistency": CONSISTENCY, "max_depth": max_depth,
        },
        "evaluated": {
            "time_ids": per_step["time_ids"], "view_ids": [int(v) for v in recon.view_ids],
            "model_size": list(recon.size), "original_sizes": [list(s) for s in recon.original_sizes],
        },
        "depth": depth, "cameras": cameras, "points": points, "dynamic_mask": mask, "consistency": consistency,
        "per_step": per_step,
        "notes": notes + point_notes + mask_notes + consistency_notes,
    }
    return Evaluation(report=report, recon=recon, truth=truth, sim3=sim3)
