"""The coloured points of one time step that every export writes: validity, confidence and size filters in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from page4d.geometry.unprojection import unproject_depth
from page4d.reconstruction.record import Reconstruction

PointSource = Literal["depth", "points"]

DEFAULT_CONF_PERCENTILE = 20.0
"""Drop the least confident fifth of a time step's valid pixels (VGGT's demos use similar thresholds)."""
MOVING_THRESHOLD = 0.5
"""``dynamic_mask`` probability above which a pixel counts as moving."""
SUBSAMPLE_SEED = 0
MAX_MOVING_POINTS = 150_000
"""Moving points per time step that ``page4d view`` draws and the rerun export records (a seeded random subset
beyond it)."""
BACKGROUND_FACTOR = 4
MAX_STATIC_POINTS = BACKGROUND_FACTOR * MAX_MOVING_POINTS
"""Static points over the whole clip, ``MAX_STATIC_POINTS // T`` per step, so the background takes the same room
however long the clip."""


@dataclass
class PointSelection:
    """Selected pixels of one time step over all views, one row per point, in (view, row, column) order."""

    xyz: np.ndarray
    """``[N, 3]`` float32 world coordinates."""
    rgb: np.ndarray
    """``[N, 3]`` uint8 colour of the source pixel in ``recon.images``."""
    conf: np.ndarray
    """``[N]`` float32 confidence of the source pixel."""
    mask: np.ndarray
    """``[N]`` float32 ``dynamic_mask`` probability of the source pixel (1 = moving); 0 without a mask head."""
    view: np.ndarray
    """``[N]`` int64 view index (position in ``recon.view_ids``)."""
    pixel: np.ndarray
    """``[N, 2]`` int64 (u, v) = (column, row) of the source pixel on the model grid."""

    def __len__(self) -> int:
        return len(self.xyz)

    @property
    def moving(self) -> np.ndarray:
        """``[N]`` bool, ``mask > MOVING_THRESHOLD``; all False when the reconstruction has no mask."""
        return self.mask > MOVING_THRESHOLD

    def subset(self, keep: np.ndarray) -> PointSelection:
        """The rows picked by a boolean mask or index array ``keep``."""
        return PointSelection(*(getattr(self, f.name)[keep] for f in dataclasses.fields(self)))

    def sample(self, max_points: int) -> PointSelection:
        """At most ``max_points`` rows: a seeded random subset (the same on every call), kept in row order."""
        if len(self) <= max_points:
            return self
        rng = np.random.default_rng(SUBSAMPLE_SEED)
        return self.subset(np.sort(rng.choice(len(self), max_points, replace=False)))

    @staticmethod
    def concat(selections: list[PointSelection]) -> PointSelection:
        """The rows of ``selections`` one after the other."""
        return PointSelection(
            *(np.concatenate([getattr(s, f.name) for s in selections]) for f in dataclasses.fields(PointSelection))
        )


def select_points(
    recon: Reconstruction,
    t: int,
    *,
    source: PointSource = "depth",
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    max_points: int | None = None,
) -> PointSelection:
    """The valid, confident points of time step index ``t`` (position in ``recon.time_ids``) over all views.

    ``source="depth"`` takes ``recon.depth_points()[t]`` (unprojected for this step only) with ``depth_conf``;
    ``"points"`` the point head's ``world_points`` with ``world_points_conf``. A pixel is valid when its point
    and confidence are finite, the confidence is > 0 (0 marks "no value", e.g. ground truth without depth) and
    its depth in its own camera is > 0. Of the valid pixels, those with confidence at or above the
    ``conf_percentile``-th percentile of the step's valid confidences are kept (ties are kept, so 0 or a
    constant confidence keeps every valid pixel). ``max_points`` then draws a seeded random subset (the same
    on every call), kept in pixel order.
    """
    check_time_index(recon, t)
    check_conf_percentile(conf_percentile)
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be positive or None, got {max_points}")
    if source == "depth":
        depth, conf = recon.depth[t], recon.depth_conf[t]
        xyz = unproject_depth(
            torch.from_numpy(depth), torch.from_numpy(recon.extrinsic[t]), torch.from_numpy(recon.intrinsic[t])
        ).numpy()
    elif source == "points":
        xyz, conf = recon.world_points[t], recon.world_points_conf[t]
        depth = _camera_depth(xyz, recon.extrinsic[t])
    else:
        raise ValueError(f"source must be 'depth' or 'points', got {source!r}")

    valid = np.isfinite(xyz).all(-1) & np.isfinite(conf) & (conf > 0) & np.isfinite(depth) & (depth > 0)
    if valid.any():
        valid &= conf >= np.percentile(conf[valid], conf_percentile)
    view, row, col = np.nonzero(valid)
    mask = recon.dynamic_mask
    moving = np.zeros(len(view), np.float32) if mask is None else mask[t][valid].astype(np.float32)
    selection = PointSelection(
        xyz=xyz[valid].astype(np.float32), rgb=recon.images[t][valid], conf=conf[valid].astype(np.float32),
        mask=moving, view=view.astype(np.int64), pixel=np.stack([col, row], axis=-1).astype(np.int64),
    )
    return selection if max_points is None else selection.sample(max_points)


def check_time_index(recon: Reconstruction, t: int) -> None:
    """``ValueError`` unless ``t`` is a time step index (position in ``recon.time_ids``)."""
    if not 0 <= t < recon.num_times:
        last = recon.num_times - 1
        raise ValueError(f"time index {t} is out of range for {recon.num_times} time steps; pass 0 to {last}")


def check_conf_percentile(conf_percentile: float) -> None:
    """``ValueError`` unless ``conf_percentile`` is in [0, 100]."""
    if not 0 <= conf_percentile <= 100:
        raise ValueError(f"conf_percentile must be in [0, 100], got {conf_percentile}")


def time_name(recon: Reconstruction, t: int) -> str:
    """``time_XX``: the file-name stem of time step index ``t``, XX its time id with at least two digits."""
    return f"time_{int(recon.time_ids[t]):02d}"


def _camera_depth(points: np.ndarray, extrinsic: np.ndarray) -> np.ndarray:
    """z of world points ``[V, H, W, 3]`` in their own cameras ``extrinsic [V, 3, 4]`` -> ``[V, H, W]``."""
    rot_z, trans_z = extrinsic[:, 2, :3], extrinsic[:, 2, 3]
    return np.einsum("vhwc,vc->vhw", points, rot_z) + trans_z[:, None, None]
