"""Coloured point clouds as PLY files, one static and one dynamic file per time step.

Layout under the export folder::

    points/time_XX_static.ply    pixels with dynamic_mask <= 0.5 (every point when there is no mask)
    points/time_XX_dynamic.ply   pixels with dynamic_mask > 0.5

A part with no point is not written (an empty PLY carries nothing and trimesh cannot write one), so a
reconstruction without a mask has static files only. Binary little-endian PLY, float32 xyz + RGBA (alpha 255).
"""

from __future__ import annotations

from pathlib import Path

import trimesh

from page4d.export.points import PointSelection, select_points, time_name
from page4d.reconstruction.record import Reconstruction

POINTS_FOLDER = "points"


def write_point_cloud(recon: Reconstruction, folder: Path, t: int, **selection) -> list[Path]:
    """Write the static and dynamic PLY of time step index ``t`` under ``folder/points``; returns the files written.

    ``selection`` goes to :func:`page4d.export.points.select_points` (``source``, ``conf_percentile``, ``max_points``).
    """
    points = select_points(recon, t, **selection)
    out = Path(folder) / POINTS_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for part, keep in (("static", ~points.moving), ("dynamic", points.moving)):
        if keep.any():
            path = out / f"{time_name(recon, t)}_{part}.ply"
            written.append(write_points(points.subset(keep), path))
    return written


def write_point_clouds(recon: Reconstruction, folder: Path, **selection) -> list[Path]:
    """:func:`write_point_cloud` for every time step; returns the files written, in time order."""
    return [path for t in range(recon.num_times) for path in write_point_cloud(recon, folder, t, **selection)]


def write_points(points: PointSelection, path: Path) -> Path:
    """Write ``points`` (a non-empty selection) as a coloured binary PLY at ``path``; returns it."""
    trimesh.PointCloud(points.xyz, colors=points.rgb).export(path, file_type="ply")
    return path
