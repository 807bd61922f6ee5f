"""A rerun recording: the whole clip in one ``.rrd`` file, for the rerun viewer (``rerun recording.rrd``).

Layout under the export folder: ``recording.rrd``, one recording (application id ``page4d``, a fresh recording id
per export) with one time line, ``time``, whose sequence values are the clip's time ids. Its entities (per step: on
the time line; static: once, for every step)::

    world                            ViewCoordinates RDF (static), when the world is a camera's (below)
    world/cameras                    AnnotationContext (static): mask class 0 "static", 1 "moving"
    world/cameras/viewN              Transform3D per step, camera-to-world: translation = the camera centre -Rᵀt,
                                     mat3x3 = Rᵀ, of the world-to-camera [R | t]
      .../viewN/image                Pinhole per step (K at the model-input resolution, W × H, camera_xyz RDF) and
                                     Image: the model-input RGB [H, W, 3] uint8
      .../viewN/image/depth          DepthImage [H, W] float32: z-depth, meter 1 (non-finite depth written as 0:
                                     no depth)
      .../viewN/image/dynamic_mask   SegmentationImage [H, W] uint8: 1 where dynamic_mask > MOVING_THRESHOLD
    world/points/moving              Points3D per step: the step's moving points, [N, 3] positions, [N, 3] uint8
                                     colours and a ``confidence`` component [N] float32
    world/points/static              Points3D (static): the static points of every step, same components

N is the view id. The points are :func:`~page4d.export.points.select_points`'s (the same filter as the other
exports) and ``confidence`` is each point's confidence (an extra component beside positions and colours). The static
background does not move, so it is one cloud over the clip, not one per step: each step adds its own static points,
which fill in what another step's views missed. The file stays bounded by keeping at most :data:`MAX_MOVING_POINTS`
moving points per step and :data:`MAX_STATIC_POINTS` static points in all (seeded random subsets). Without a mask
head nothing is known to move: there are no masks and no moving points, and every point counts as static, as in the
PLY export.

The world is the reconstruction's (``meta.json``'s ``world``); when it is a camera's frame (the model's, not a
calibration's), its axes are OpenCV's and the file says so (RDF: x right, y down, z forward), which lets the viewer
put up where the first camera had it. A calibration's world keeps whatever axes it has, which the file does not
guess.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from page4d.export.points import (
    MAX_MOVING_POINTS,
    MAX_STATIC_POINTS,
    MOVING_THRESHOLD,
    PointSelection,
    select_points,
)
from page4d.geometry.unprojection import camera_to_world
from page4d.reconstruction.record import Reconstruction

if TYPE_CHECKING:
    import rerun as rr

FILE = "recording.rrd"
APPLICATION_ID = "page4d"
TIMELINE = "time"


def write_rerun(recon: Reconstruction, folder: Path, conf_percentile: float, progress: bool = True) -> Path:
    """Write ``folder/recording.rrd`` (layout in the module docstring); returns its path. ``progress`` shows a
    tqdm bar over the time steps. ``ValueError`` when the environment turns rerun off (``RERUN=off``)."""
    import rerun as rr

    path = Path(folder) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = rr.RecordingStream(application_id=APPLICATION_ID, recording_id=uuid.uuid4())
    _check_enabled(rec)
    rec.save(path)
    rec.set_log_time_enabled(False)  # the clip's time line only, not the wall-clock time of the export
    try:
        if _camera_world(recon):
            rec.log("world", rr.ViewCoordinates.RDF, static=True)
        rec.log("world/cameras", rr.AnnotationContext([(0, "static", (0, 0, 0, 0)), (1, "moving", (255, 0, 0, 128))]),
                static=True)
        per_step = MAX_STATIC_POINTS // recon.num_times
        background = []
        for t in tqdm(range(recon.num_times), desc="rerun", unit="step", disable=not progress):
            rec.set_time(TIMELINE, sequence=int(recon.time_ids[t]))
            _log_cameras(rec, recon, t)
            points = select_points(recon, t, conf_percentile=conf_percentile)
            if recon.dynamic_mask is not None:
                # logged even when empty, so that the previous step's moving points do not stay on screen
                _log_points(rec, "world/points/moving", points.subset(points.moving).sample(MAX_MOVING_POINTS))
            background.append(points.subset(~points.moving).sample(per_step))
        _log_points(rec, "world/points/static", PointSelection.concat(background), static=True)
    finally:
        rec.flush()
        rec.disconnect()  # closes the file (with its footer) before anyone reads it
    return path


def check_enabled() -> None:
    """``ValueError`` when the environment turns rerun off (call before long work)."""
    import rerun as rr

    _check_enabled(rr.RecordingStream(application_id=APPLICATION_ID))


def _check_enabled(rec: rr.RecordingStream) -> None:
    if not rec.is_enabled():  # RERUN=off in the environment turns every stream off: rerun would write no file
        raise ValueError("the rerun export found rerun turned off (RERUN=off in the environment); unset RERUN")


def _camera_world(recon: Reconstruction) -> bool:
    """Whether the world is a camera's frame (OpenCV axes), i.e. not a calibration's."""
    return not recon.meta.get("calibration", {}).get("poses", False)


def _log_cameras(rec: rr.RecordingStream, recon: Reconstruction, t: int) -> None:
    """Pose, pinhole, image, depth and mask of every view at time step index ``t`` (the current time)."""
    import rerun as rr

    height, width = recon.size
    images, depths, poses = recon.images[t], recon.depth[t], camera_to_world(recon.extrinsic[t])
    masks = None if recon.dynamic_mask is None else recon.dynamic_mask[t]
    for v, view_id in enumerate(recon.view_ids):
        camera = f"world/cameras/view{int(view_id)}"
        rec.log(camera, rr.Transform3D(translation=poses[v, :3, 3], mat3x3=poses[v, :3, :3],
                                       relation=rr.TransformRelation.ParentFromChild))
        rec.log(f"{camera}/image",
                rr.Pinhole(image_from_camera=recon.intrinsic[t, v], resolution=[width, height],
                           camera_xyz=rr.ViewCoordinates.RDF),
                rr.Image(images[v]))
        depth = depths[v]
        rec.log(f"{camera}/image/depth", rr.DepthImage(np.where(np.isfinite(depth), depth, 0), meter=1.0))
        if masks is not None:
            moving = (masks[v] > MOVING_THRESHOLD).astype(np.uint8)
            rec.log(f"{camera}/image/dynamic_mask", rr.SegmentationImage(moving))


def _log_points(rec: rr.RecordingStream, entity: str, points: PointSelection, static: bool = False) -> None:
    """``points`` at ``entity``: positions ``[N, 3]``, colours ``[N, 3]`` uint8 and a ``confidence`` ``[N]``."""
    import rerun as rr

    rec.log(entity, rr.Points3D(points.xyz, colors=points.rgb), rr.AnyValues(confidence=points.conf), static=static)
