"""Long clips in bounded memory: overlapping time windows, each aligned to the ones before by a Sim(3).

Every window is an independent forward pass whose world frame is its own first camera. Window ``k`` is
brought into the frame of window 0 by the similarity ``(s, R, t)`` that best maps its depth points on the
overlapping time steps onto the already-stitched points of the same pixels (Umeyama, confidence-selected).
Under ``X' = s·R·X + t`` a world-to-camera ``[R_c | t_c]`` becomes ``[R_c·Rᵀ | s·t_c − R_c·Rᵀ·t]`` and depth
scales by ``s``; intrinsics and confidences are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from page4d.geometry.alignment import umeyama_sim3
from page4d.geometry.unprojection import unproject_depth


def plan_windows(num_times: int, window: int, overlap: int) -> list[range]:
    """Time windows of ``window`` steps covering ``range(num_times)``; consecutive windows share at least ``overlap``
    steps (the last one is moved back to end at ``num_times``, so it may share more)."""
    if window >= num_times:
        return [range(num_times)]
    if not 0 < overlap < window:
        raise ValueError(f"--overlap {overlap} must be at least 1 and below the window size {window}")
    starts = list(range(0, num_times - window + 1, window - overlap))
    if starts[-1] + window < num_times:
        starts.append(num_times - window)
    return [range(start, start + window) for start in starts]


def depth_points(depth: np.ndarray, extrinsic: np.ndarray, intrinsic: np.ndarray) -> np.ndarray:
    """``[N, H, W]`` depth, ``[N, 3, 4]`` world-to-camera, ``[N, 3, 3]`` K -> world points ``[N, H, W, 3]``."""
    points = unproject_depth(torch.from_numpy(depth), torch.from_numpy(extrinsic), torch.from_numpy(intrinsic))
    return points.numpy()


def fit_overlap(
    target: np.ndarray, target_conf: np.ndarray, source: np.ndarray, source_conf: np.ndarray, max_points: int = 20000
) -> tuple[float, np.ndarray, np.ndarray]:
    """Sim(3) ``(s, R [3, 3], t [3])`` with ``target ≈ s·R·source + t`` from the same pixels seen twice.

    ``target``, ``source`` are world points ``[N, H, W, 3]`` of the overlapping frames in the two windows,
    with confidences ``[N, H, W]``. Pixels finite in both and in the upper half of both confidences are used,
    evenly subsampled to at most ``max_points``.
    """
    finite = np.isfinite(target).all(-1) & np.isfinite(source).all(-1)
    good = finite & (target_conf >= np.median(target_conf[finite])) & (source_conf >= np.median(source_conf[finite]))
    if good.sum() < 3:
        good = finite
    if good.sum() < 3:
        raise ValueError("the window overlap has fewer than 3 finite points to align; use a larger --overlap")
    index = np.flatnonzero(good)
    index = index[np.linspace(0, len(index) - 1, min(max_points, len(index))).round().astype(np.int64)]
    src, dst = source.reshape(-1, 3)[index], target.reshape(-1, 3)[index]
    scale, rot, trans = umeyama_sim3(torch.from_numpy(src), torch.from_numpy(dst))
    return scale, rot.numpy(), trans.numpy()


def apply_sim3(arrays: dict[str, np.ndarray], scale: float, rot: np.ndarray, trans: np.ndarray) -> None:
    """Move one window's ``extrinsic [T', V, 3, 4]``, ``depth [T', V, H, W]`` and ``world_points [T', V, H, W, 3]``
    (in place) by ``X' = s·R·X + t``; see the module docstring. Points are moved one time step at a time in
    float64, so the transient memory is one step's, not the window's."""
    ext = arrays["extrinsic"].astype(np.float64)
    rot_c = ext[..., :3, :3] @ rot.T
    t_c = scale * ext[..., :3, 3] - (rot_c @ trans[:, None])[..., 0]
    arrays["extrinsic"] = np.concatenate([rot_c, t_c[..., None]], axis=-1).astype(np.float32)
    arrays["depth"] *= np.float32(scale)
    points = arrays["world_points"]
    for t in range(len(points)):
        points[t] = scale * points[t].astype(np.float64) @ rot.T + trans
