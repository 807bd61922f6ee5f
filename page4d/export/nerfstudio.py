"""A nerfstudio / gsplat dataset: every frame at its original resolution with its camera, moving-pixel mask and
time, plus the static points to initialise Gaussians from.

Layout under the export folder::

    nerfstudio/transforms.json          nerfstudio's format (below)
    nerfstudio/images/time_XX_viewN.png the frames as the model saw them (lens distortion removed)
    nerfstudio/masks/time_XX_viewN.png  255 where a pixel is static, 0 where it moves (nerfstudio ignores 0)
    nerfstudio/points_static.ply        the static points of every time step (``ply_file_path``)

``transforms.json`` holds per frame ``file_path``, ``mask_path``, ``transform_matrix`` (camera-to-world, 4 × 4, in
nerfstudio's OpenGL axes: x right, y up, z back), the pinhole ``fl_x fl_y cx cy w h`` at the original resolution
(``camera_model`` PINHOLE: the frames are undistorted) and ``time`` in [0, 1] (time step index / (T - 1)) for
dynamic methods. nerfstudio casts a pixel's ray through its centre at (u + 0.5, v + 0.5), page4d puts that centre
at (u, v), so the principal point is written shifted by +0.5 (as in the COLMAP export): the rays nerfstudio casts
are page4d's. The world frame is ``cameras.json``'s, unchanged: nerfstudio's dataparser re-centres and rescales
by itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from page4d.export.ply import write_points
from page4d.export.points import MOVING_THRESHOLD, PointSelection, select_points, time_name
from page4d.geometry.unprojection import camera_to_world
from page4d.reconstruction.record import Reconstruction

FOLDER = "nerfstudio"
MAX_POINTS = 300_000
"""Static points kept for initialisation (a seeded random subset beyond it)."""
PIXEL_CENTRE = 0.5
"""Where nerfstudio puts the centre of pixel (0, 0) along each axis (page4d: 0)."""
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
"""Camera axes: OpenCV (x right, y down, z forward) -> OpenGL (x right, y up, z back)."""


def original_mask(recon: Reconstruction, t: int, v: int) -> np.ndarray:
    """``[H0, W0]`` bool, True where the pixel moves: the dynamic mask sampled at each original pixel's position on
    the model grid (nearest pixel; pixels the crop cut off take the nearest kept one)."""
    height, width = recon.original_sizes[v]
    grid = recon.dynamic_mask[t, v]
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    uv = recon.transforms[v].map_pixels(np.stack([cols, rows], axis=-1).astype(np.float64))
    u = np.clip(np.rint(uv[..., 0]), 0, grid.shape[1] - 1).astype(np.int64)
    r = np.clip(np.rint(uv[..., 1]), 0, grid.shape[0] - 1).astype(np.int64)
    return grid[r, u] > MOVING_THRESHOLD


def write_nerfstudio(
    recon: Reconstruction, folder: Path, frames: Callable[[int, int], np.ndarray], conf_percentile: float
) -> list[Path]:
    """Write the dataset under ``folder/nerfstudio``; ``frames(t, v)``: the original image of step index ``t``,
    view ``v`` (``[H0, W0, 3]`` uint8). Returns the files written."""
    out = Path(folder) / FOLDER
    (out / "images").mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    entries = []
    steps = max(recon.num_times - 1, 1)
    poses = camera_to_world(recon.extrinsic)
    for t in range(recon.num_times):
        for v, view_id in enumerate(recon.view_ids):
            name = f"{time_name(recon, t)}_view{int(view_id)}.png"
            image = out / "images" / name
            Image.fromarray(frames(t, v)).save(image)
            written.append(image)
            k = recon.intrinsic_original[t, v].astype(np.float64)
            height, width = recon.original_sizes[v]
            entry = {
                "file_path": f"images/{name}",
                "transform_matrix": (poses[t, v] @ OPENCV_TO_OPENGL).tolist(),  # OpenCV -> OpenGL camera axes
                "fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]),
                "cx": float(k[0, 2]) + PIXEL_CENTRE, "cy": float(k[1, 2]) + PIXEL_CENTRE,
                "w": int(width), "h": int(height), "time": t / steps,
            }
            if recon.dynamic_mask is not None:
                mask = out / "masks" / name
                mask.parent.mkdir(exist_ok=True)
                Image.fromarray(np.where(original_mask(recon, t, v), 0, 255).astype(np.uint8)).save(mask)
                written.append(mask)
                entry["mask_path"] = f"masks/{name}"
            entries.append(entry)
    cloud = _static_points(recon, conf_percentile)
    document = {"camera_model": "PINHOLE", "frames": entries}
    if len(cloud):
        written.append(write_points(cloud, out / "points_static.ply"))
        document["ply_file_path"] = "points_static.ply"
    path = out / "transforms.json"
    path.write_text(json.dumps(document, indent=1, allow_nan=False))
    return [path, *written]


def _static_points(recon: Reconstruction, conf_percentile: float) -> PointSelection:
    """The confident static points of every time step, at most ``MAX_POINTS`` (a seeded random subset)."""
    every = PointSelection.concat([select_points(recon, t, conf_percentile=conf_percentile)
                                   for t in range(recon.num_times)])
    return every.subset(~every.moving).sample(MAX_POINTS)
