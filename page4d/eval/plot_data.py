"""What the eval figures draw, as arrays (no matplotlib): camera centres seen from above and depth error maps.

Both reuse the alignments the metrics were computed with, so a figure shows exactly what its number scores:
the cameras the Sim(3) of the ATE (:func:`page4d.eval.protocols.camera_report`), the depth the median scale of
AbsRel (``report["depth"]["median"]["fit"]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from page4d.eval.geometry_metrics import sim3_points
from page4d.eval.metrics import camera_centres
from page4d.eval.protocols import Sim3
from page4d.geometry.ground import ground_axes, top_view

ERROR_PERCENTILE = 95.0
"""The error colour scale ends at this percentile of the clip's errors: the depth-edge pixels, whose errors are
large whatever the model, do not flatten the rest (at the 98th percentile they pushed page4d-small's scale on
tabletop4v to 0.66 where the median error is 0.04)."""
MIN_ERROR_RANGE = 0.01
"""Lowest top of the error colour scale (1 % AbsRel): a near-perfect prediction stays dark instead of having
its rounding noise stretched over the whole scale."""
DEPTH_PERCENTILES = (2.0, 98.0)


@dataclass
class CameraTopView:
    """Camera centres of every (t, v) on the ground plane seen from above, in (right, forward) coordinates of
    :func:`page4d.geometry.ground.ground_axes` (the first ground-truth camera looks up the page), ground-truth
    units, relative to the mean ground-truth centre."""

    gt: np.ndarray
    """``[T, V, 2]`` ground-truth centres."""
    pred: np.ndarray | None
    """``[T, V, 2]`` predicted centres mapped by the ATE's Sim(3); None where there is no Sim(3)."""


def camera_top_view(pred_w2c: torch.Tensor, gt_w2c: torch.Tensor, sim3: Sim3 | None) -> CameraTopView:
    """:class:`CameraTopView` of world-to-camera ``pred_w2c, gt_w2c [T, V, 3, 4]``; ``sim3`` maps the predicted
    world into the ground truth's (the one :func:`page4d.eval.protocols.camera_report` fitted for the ATE)."""
    gt_w2c = gt_w2c.double()
    gt_centres = camera_centres(gt_w2c).numpy()
    # Up comes from the ground truth: the aligned prediction lives in its world, and its cameras are the reliable ones.
    axes = ground_axes(gt_w2c.numpy())
    origin = gt_centres.reshape(-1, 3).mean(0)
    pred = None
    if sim3 is not None:
        aligned = sim3_points(camera_centres(pred_w2c.double()), sim3.scale, sim3.rotation, sim3.translation)
        pred = top_view(aligned.numpy(), axes, origin)
    return CameraTopView(gt=top_view(gt_centres, axes, origin), pred=pred)


@dataclass
class DepthErrors:
    """Median-aligned depth against the ground truth, per pixel, with the colour ranges shared by every step."""

    aligned: np.ndarray
    """``[T, V, H, W]`` float64 predicted depth times the median scale (ground-truth units)."""
    gt: np.ndarray
    """``[T, V, H, W]`` float64 ground-truth depth, NaN where it is not valid."""
    error: np.ndarray
    """``[T, V, H, W]`` float64 ``|aligned − gt| / gt`` (the AbsRel of one pixel), NaN where gt is not valid."""
    depth_range: tuple[float, float]
    """``DEPTH_PERCENTILES`` of the valid ground-truth depth of the clip (both depth rows use it)."""
    error_max: float
    """Top of the error scale: the ``ERROR_PERCENTILE``-th error of the clip, at least ``MIN_ERROR_RANGE``."""

    def view_abs_rel(self, t: int, v: int) -> float | None:
        """AbsRel of image ``(t, v)`` (mean of its valid pixels' errors); None without valid pixels."""
        values = self.error[t, v][np.isfinite(self.error[t, v])]
        return float(values.mean()) if values.size else None


def depth_errors(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, scale: float | list[list[float | None]]
) -> DepthErrors:
    """:class:`DepthErrors` of ``pred, gt, valid [T, V, H, W]`` with the median scale of the report's depth
    section (``report["depth"]["median"]["fit"]["scale"]``): one float (``video-depth``) or ``[T][V]``
    (``per-frame``; None for an image without valid pixels, which stays unscaled as the metric leaves it).
    Requires at least one valid pixel (``evaluate`` does)."""
    pred = np.asarray(pred, np.float64)
    if isinstance(scale, list):
        scales = np.array([[1.0 if s is None else s for s in row] for row in scale], np.float64)
    else:
        scales = np.full(pred.shape[:2], float(scale))
    aligned = pred * scales[..., None, None]
    valid = np.asarray(valid, bool)
    truth = np.where(valid, np.asarray(gt, np.float64), np.nan)
    error = np.abs(aligned - truth) / truth
    low, high = (float(x) for x in np.percentile(truth[valid], DEPTH_PERCENTILES))
    error_max = max(float(np.percentile(error[valid], ERROR_PERCENTILE)), MIN_ERROR_RANGE)
    return DepthErrors(aligned=aligned, gt=truth, error=error, depth_range=(low, high), error_max=error_max)
