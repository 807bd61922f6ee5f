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
from page4d.geometry.unprojection import pixels_to_camera


def plan_windows(num_times: int, window: int, overlap: int, equal: bool = True) -> list[range]:
    """Time windows of ``window`` steps covering ``range(num_times)``; consecutive windows share at least ``overlap``
    steps. ``equal``: the last one is moved back to end at ``num_times``, so it may share more (every window
    gives its registration as many steps); else it is cut short (for steps that are registered one by one)."""
    if window >= num_times:
        return [range(num_times)]
    if not 0 <= overlap < window:
        raise ValueError(f"--overlap {overlap} must be at least 0 and below the window size {window}")
    starts = list(range(0, num_times - window + 1, window - overlap))
    if starts[-1] + window < num_times:
        starts.append(num_times - window if equal else starts[-1] + window - overlap)
    return [range(start, min(start + window, num_times)) for start in starts]


def pixel_points(depth: np.ndarray, extrinsic: np.ndarray, intrinsic: np.ndarray, index: np.ndarray) -> np.ndarray:
    """World points ``[M, 3]`` float64 of the pixels ``index`` (flat into ``depth [N, H, W]``), unprojected as
    ``geometry.unprojection.unproject_depth`` does but without building the dense ``[N, H, W, 3]`` map."""
    frame, row, col = np.unravel_index(index, depth.shape)
    ext = extrinsic[frame].astype(np.float64)
    uv = torch.from_numpy(np.stack([col, row], axis=-1)[:, None])
    z = torch.from_numpy(depth.reshape(-1)[index][:, None])
    cam = pixels_to_camera(uv, z, torch.from_numpy(intrinsic[frame]))[:, 0].numpy()
    rot, trans = ext[:, :, :3], ext[:, :, 3]
    return np.einsum("mji,mj->mi", rot, cam - trans)


def fit_overlap(
    target: dict[str, np.ndarray], source: dict[str, np.ndarray], max_points: int = 20000
) -> tuple[float, np.ndarray, np.ndarray]:
    """Sim(3) ``(s, R [3, 3], t [3])`` with ``target ≈ s·R·source + t`` from the same pixels seen twice.

    ``target`` and ``source`` hold the overlapping frames of the two windows: ``depth``, ``depth_conf``
    ``[N, H, W]``, ``extrinsic [N, 3, 4]``, ``intrinsic [N, 3, 3]``. Pixels with finite positive depth in both
    and in the upper half of both confidences are used, evenly subsampled to at most ``max_points``, and
    unprojected alone, so the cost does not depend on the overlap's size.
    """
    finite = (np.isfinite(target["depth"]) & (target["depth"] > 0) & np.isfinite(source["depth"])
              & (source["depth"] > 0))
    if finite.sum() < 3:
        raise ValueError("the window overlap has fewer than 3 valid depths to align; use a larger --overlap")
    good = finite.copy()
    for side in (target, source):
        good &= side["depth_conf"] >= np.median(side["depth_conf"][finite])
    if good.sum() < 3:
        good = finite
    index = np.flatnonzero(good)
    index = index[np.linspace(0, len(index) - 1, min(max_points, len(index))).round().astype(np.int64)]
    src, dst = (pixel_points(side["depth"], side["extrinsic"], side["intrinsic"], index) for side in (source, target))
    scale, rot, trans = umeyama_sim3(torch.from_numpy(src), torch.from_numpy(dst))
    return scale, rot.numpy(), trans.numpy()


def apply_sim3_to_outputs(arrays: dict[str, np.ndarray], scale: float, rot: np.ndarray, trans: np.ndarray) -> None:
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
