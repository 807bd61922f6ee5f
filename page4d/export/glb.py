"""One time step as a GLB scene: the coloured point cloud and a camera frustum per view.

GLB coordinates are the reconstruction's world (camera (t0, v0), OpenCV axes: y down, z forward) turned by
``OPENCV_TO_GLTF`` (180° about x) into glTF's convention (y up, the first camera looking down -z), so viewers
show the scene upright; multiply by ``OPENCV_TO_GLTF`` (its own inverse) to get our world coordinates back.
Nodes: ``points`` (a POINTS primitive, omitted when no point survives the selection) and ``camera_view{N}``
per view, whose transform is the camera-to-world pose and whose mesh ``frustum_view{N}`` is a pyramid in
camera coordinates: apex (vertex 0) at the optical centre, base (vertices 1-4: top-left, top-right,
bottom-right, bottom-left image corners) at z = frustum depth, in front of the camera.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import torch
import trimesh

from page4d.export.points import select_points
from page4d.geometry.unprojection import camera_to_world, pixels_to_camera
from page4d.reconstruction.record import Reconstruction

OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0, 1.0])
FRUSTUM_SCALE = 0.05
"""Frustum depth as a fraction of the scene extent (bounding-box diagonal of points and camera centres)."""
# Both windings of the four sides, so viewers that cull back faces show the frustum from inside and outside.
_SIDES = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
FRUSTUM_FACES = np.concatenate([_SIDES, _SIDES[:, ::-1]])


def frustum_vertices(intrinsic: np.ndarray, size: tuple[int, int], depth: float) -> np.ndarray:
    """``[5, 3]`` camera-frame pyramid: the centre, then the outer image corners (TL, TR, BR, BL) at z = ``depth``.

    ``intrinsic [3, 3]`` and ``size`` (H, W) are the model grid's; pixel centres are integers, so the
    image's outer edges are at -0.5 and W - 0.5 / H - 0.5.
    """
    height, width = size
    corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [width - 0.5, height - 0.5], [-0.5, height - 0.5]])
    z = torch.full((4,), float(depth), dtype=torch.float64)
    base = pixels_to_camera(torch.from_numpy(corners), z, torch.from_numpy(intrinsic)).numpy()
    return np.concatenate([np.zeros((1, 3)), base])


def write_scene(recon: Reconstruction, path: Path, t: int, **selection) -> Path:
    """Write the GLB of time step index ``t`` to ``path`` (parent folders created); returns ``path``.

    ``selection`` goes to :func:`page4d.export.points.select_points` (``source``, ``conf_percentile``, ``max_points``).
    """
    points = select_points(recon, t, **selection)
    poses = camera_to_world(recon.extrinsic[t])
    spanned = np.concatenate([points.xyz.astype(np.float64), poses[:, :3, 3]])
    extent = float(np.linalg.norm(spanned.max(0) - spanned.min(0)))
    depth = FRUSTUM_SCALE * (extent if extent > 0 else 1.0)

    scene = trimesh.Scene()
    if len(points):
        xyz = (points.xyz.astype(np.float64) @ OPENCV_TO_GLTF[:3, :3]).astype(np.float32)
        scene.add_geometry(trimesh.PointCloud(xyz, colors=points.rgb), node_name="points", geom_name="points")
    for v, view_id in enumerate(recon.view_ids):
        rgb = np.round(np.array(colorsys.hsv_to_rgb(v / recon.num_views, 0.8, 1.0)) * 255)
        frustum = trimesh.Trimesh(
            vertices=frustum_vertices(recon.intrinsic[t, v], recon.size, depth), faces=FRUSTUM_FACES,
            vertex_colors=np.tile(np.append(rgb, 255).astype(np.uint8), (5, 1)), process=False,
        )
        scene.add_geometry(
            frustum, node_name=f"camera_view{int(view_id)}", geom_name=f"frustum_view{int(view_id)}",
            transform=OPENCV_TO_GLTF @ poses[v],
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene.export(path, file_type="glb")
    return path
