"""One time step as a COLMAP sparse model: ``cameras``, ``images``, ``points3D`` (and COLMAP 4's ``rigs``, ``frames``).

- Cameras: one PINHOLE camera per view at that view's ORIGINAL image resolution (``recon.original_sizes``, K
  from ``intrinsic_original``), camera id = view index + 1.
- Images: ``view{N}.png`` (N = view id, image id = view index + 1), the names of the clip layout's
  ``images/time_XX/viewN.png`` and of the ``images/`` folder ``page4d.export.export`` writes beside the model;
  pose = the world-to-camera extrinsic as ``cam_from_world``.
- Points3D: after ``--refine ba``, the refined tracks' points with every observation made at that step (track
  length > 1: COLMAP, gsplat and nerfstudio can continue from them); otherwise the selected points of the dense
  depth with their colours, each observed once, by the pixel it came from, mapped to original-resolution pixels
  (points whose pixel falls outside the original image, i.e. in padding, are dropped).

COLMAP puts the centre of the top-left pixel at (0.5, 0.5), page4d at (0, 0), so principal points and
2D observations are shifted by +0.5; projections through the written model land on the observations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from page4d.conventions import COLMAP_PIXEL_OFFSET, colmap_pinhole_params
from page4d.export.points import DEFAULT_CONF_PERCENTILE, PointSource, select_points
from page4d.interrupts import python_handlers_kept
from page4d.reconstruction.record import Reconstruction

with python_handlers_kept():  # pycolmap installs glog's SIGTERM handler when it loads
    import pycolmap

DEFAULT_MAX_POINTS = 50_000
"""Enough to initialise Gaussian splatting or inspect the geometry while keeping points3D small (~2 MB)."""


def image_name(view_id: int) -> str:
    """The COLMAP image name of a view: ``view{N}.png``."""
    return f"view{int(view_id)}.png"


def write_colmap(
    recon: Reconstruction,
    folder: Path,
    t: int,
    *,
    binary: bool = True,
    source: PointSource = "depth",
    conf_percentile: float = DEFAULT_CONF_PERCENTILE,
    max_points: int | None = DEFAULT_MAX_POINTS,
) -> Path:
    """Write the COLMAP model of time step index ``t`` into ``folder`` (created); returns ``folder``.

    ``binary`` selects ``.bin`` files, else ``.txt``. A refined reconstruction (``recon.tracks``) writes its
    tracks; otherwise ``source``, ``conf_percentile`` and ``max_points`` go to
    :func:`page4d.export.points.select_points`.
    """
    transforms = recon.transforms
    if recon.tracks is not None:
        return _write(_tracked_model(recon, t), folder, binary)
    points = select_points(recon, t, source=source, conf_percentile=conf_percentile, max_points=max_points)
    uv = np.zeros((len(points.view), 2))
    inside = np.zeros(len(points.view), dtype=bool)
    for v, transform in enumerate(transforms):
        rows = points.view == v
        uv[rows] = transform.unmap_pixels(points.pixel[rows].astype(np.float64)) + COLMAP_PIXEL_OFFSET
        height, width = transform.original_size
        inside[rows] = (uv[rows] >= 0).all(-1) & (uv[rows, 0] <= width) & (uv[rows, 1] <= height)
    points, uv = points.subset(inside), uv[inside]

    model = _cameras_and_images(recon, t, [uv[points.view == v] for v in range(recon.num_views)])
    for v in range(recon.num_views):
        for index, row in enumerate(np.flatnonzero(points.view == v)):
            track = pycolmap.Track()
            track.add_element(v + 1, index)
            model.add_point3D(points.xyz[row].astype(np.float64), track, points.rgb[row])
    return _write(model, folder, binary)


def _cameras_and_images(recon: Reconstruction, t: int, keypoints: list[np.ndarray]) -> pycolmap.Reconstruction:
    """A model with each view's camera and its image at step ``t``, holding ``keypoints`` (COLMAP pixels)."""
    model = pycolmap.Reconstruction()
    for v, (view_id, transform) in enumerate(zip(recon.view_ids, recon.transforms, strict=True)):
        height, width = transform.original_size
        k = recon.intrinsic_original[t, v].astype(np.float64)
        model.add_camera_with_trivial_rig(pycolmap.Camera(
            model="PINHOLE", width=width, height=height, params=colmap_pinhole_params(k), camera_id=v + 1))
        image = pycolmap.Image(name=image_name(view_id), keypoints=keypoints[v], camera_id=v + 1, image_id=v + 1)
        w2c = recon.extrinsic[t, v].astype(np.float64)
        model.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:, :3]), w2c[:, 3]))
    return model


def _tracked_model(recon: Reconstruction, t: int) -> pycolmap.Reconstruction:
    """The refined tracks seen at step ``t``: every point with all its observations of that step, coloured from
    the model-input image at its first observation."""
    seen = recon.tracks.at_step(t)
    tracks = seen.tracks
    rows = [np.flatnonzero(tracks.view == v) for v in range(recon.num_views)]
    model = _cameras_and_images(recon, t, [tracks.xy[r] + COLMAP_PIXEL_OFFSET for r in rows])
    index = np.empty(len(tracks.point), dtype=np.int64)
    for r in rows:
        index[r] = np.arange(len(r))
    images = np.asarray(recon.images[t])
    height, width = recon.size
    for p, xyz in enumerate(seen.xyz):
        track, colour = pycolmap.Track(), None
        for row in np.flatnonzero(tracks.point == p):
            track.add_element(int(tracks.view[row]) + 1, int(index[row]))
            if colour is None:
                x, y = np.rint(recon.transforms[tracks.view[row]].map_pixels(tracks.xy[row])).astype(np.int64)
                colour = images[tracks.view[row], min(max(y, 0), height - 1), min(max(x, 0), width - 1)]
        model.add_point3D(xyz.astype(np.float64), track, colour)
    model.update_point_3d_errors()  # each point's mean reprojection error, which COLMAP's tools read
    return model


def _write(model: pycolmap.Reconstruction, folder: Path, binary: bool) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if binary:
        model.write_binary(folder)
    else:
        model.write_text(folder)
    return folder
