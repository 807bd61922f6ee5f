"""Bundle adjustment of a reconstruction's cameras on its tracks, with pycolmap (Ceres underneath).

The problem: one pinhole camera per view (K shared over time, at the view's original resolution), one image per
camera for a static rig (its observations of every step folded onto it) or one per frame otherwise, and the
tracks' points triangulated from the starting cameras. Two passes with a Cauchy loss; between them the
observations further than ``max_error_px`` from their point's projection are removed (outliers). The gauge
keeps the first two cameras' frame and scale, so the output world stays the input's; with a calibration's
poses (``fixed_poses``) only the points move and the cameras come out exactly as they went in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pycolmap

from page4d.conventions import COLMAP_PIXEL_OFFSET
from page4d.reconstruction.rig import rig_poses
from page4d.refine.tracks import Tracks


@dataclass(frozen=True)
class BundleOptions:
    """What the adjustment may change, and how it treats outliers."""

    static: bool
    """One pose per camera for the whole clip (a static rig); else one per frame."""
    fixed_poses: bool = False
    """Keep every pose (a calibration's): only the points are adjusted."""
    refine_focal: bool = False
    """Adjust each camera's focal length too (shared over time)."""
    loss_scale_px: float = 2.0
    """Scale of the Cauchy loss: residuals beyond it weigh less."""
    max_error_px: float = 4.0
    """Observations further than this from their point's projection after the first pass are outliers."""
    max_points: int = 20000
    """At most this many points enter the problem (the longest tracks first): memory stays bounded."""


@dataclass
class BundleResult:
    """The adjusted cameras and points, and how well they explain the tracks."""

    extrinsic: np.ndarray
    """``[T, V, 3, 4]`` world-to-camera (a static rig's: the same for every step)."""
    intrinsic: np.ndarray
    """``[V, 3, 3]`` K at each view's original resolution."""
    points: np.ndarray
    """``[N, 3]`` the tracks' points."""
    tracks: Tracks
    """The observations kept; a static rig's have ``time`` -1 (seen at every step, folded onto its camera)."""
    error_before_px: float
    """Mean reprojection error of the kept tracks on the starting cameras (points triangulated from them)."""
    error_after_px: float
    rejected: int
    """Observations removed as outliers."""
    model: pycolmap.Reconstruction
    """The adjusted problem as a COLMAP model (images ``image{i}``; renamed by the exporter)."""


def triangulate(tracks: Tracks, extrinsic: np.ndarray, intrinsic: np.ndarray) -> np.ndarray:
    """``[N, 3]`` linear (DLT) triangulation of each track; ``extrinsic`` ``[I, 3, 4]``, ``intrinsic``
    ``[I, 3, 3]`` per image, ``tracks.view`` the image of each observation."""
    projection = intrinsic @ extrinsic  # [I, 3, 4]
    p = projection[tracks.view]
    rows = np.concatenate([tracks.xy[:, :1] * p[:, 2] - p[:, 0], tracks.xy[:, 1:] * p[:, 2] - p[:, 1]])
    owner = np.concatenate([tracks.point, tracks.point])
    normal = np.zeros((tracks.num_points, 4, 4))
    np.add.at(normal, owner, rows[:, :, None] * rows[:, None, :])
    _, vectors = np.linalg.eigh(normal)
    homogeneous = vectors[:, :, 0]
    return homogeneous[:, :3] / homogeneous[:, 3:]


def reprojection_errors(points: np.ndarray, tracks: Tracks, extrinsic: np.ndarray,
                        intrinsic: np.ndarray) -> np.ndarray:
    """``[M]`` pixel distance of each observation from its point's projection (inf behind the camera)."""
    camera = np.einsum("mij,mj->mi", extrinsic[tracks.view, :, :3], points[tracks.point]) + extrinsic[tracks.view,
                                                                                                      :, 3]
    pixel = np.einsum("mij,mj->mi", intrinsic[tracks.view], camera)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.linalg.norm(pixel[:, :2] / pixel[:, 2:] - tracks.xy, axis=1)
    return np.where(camera[:, 2] > 0, error, np.inf)


def adjust(tracks: Tracks, extrinsic: np.ndarray, intrinsic: np.ndarray, sizes: list[tuple[int, int]],
           options: BundleOptions) -> BundleResult:
    """Adjust the cameras ``extrinsic`` ``[T, V, 3, 4]`` and ``intrinsic`` ``[T, V, 3, 3]`` (original resolution;
    each view of ``sizes`` (H, W)) on ``tracks`` (``view`` = view index). ``ValueError`` if too few tracks."""
    steps, views = extrinsic.shape[:2]
    if options.static:
        tracks = tracks.per_image(tracks.view)
        poses = rig_poses(extrinsic)
    else:
        tracks = dataclasses.replace(tracks, view=tracks.time * views + tracks.view)
        poses = extrinsic.reshape(-1, 3, 4).astype(np.float64)
    tracks = _capped(tracks, options.max_points)
    camera_of = np.arange(len(poses)) % views
    k = np.median(intrinsic.astype(np.float64), axis=0)  # [V, 3, 3] shared over time
    points = triangulate(tracks, poses, k[camera_of])
    model = _model(tracks, points, poses, k, camera_of, sizes)
    rejected = _solve(model, poses, options)
    kept, kept_points, adjusted, adjusted_k = _read(model, len(poses), views)
    if options.fixed_poses:
        adjusted = poses
    by_image = dataclasses.replace(kept, view=kept.view if options.static else kept.time * views + kept.view)
    before = reprojection_errors(triangulate(by_image, poses, k[camera_of]), by_image, poses, k[camera_of])
    after = reprojection_errors(kept_points, by_image, adjusted, adjusted_k[camera_of])
    if options.fixed_poses:  # exactly the given cameras, not their round trip through a mean and quaternions
        out = extrinsic.astype(np.float64)
    elif options.static:
        out = np.broadcast_to(adjusted[None], (steps, views, 3, 4))
    else:
        out = adjusted.reshape(steps, views, 3, 4)
    return BundleResult(np.ascontiguousarray(out), adjusted_k, kept_points, kept, float(np.mean(before)),
                        float(np.mean(after)), rejected, model)


def _capped(tracks: Tracks, max_points: int) -> Tracks:
    """The ``max_points`` longest tracks (ties: evenly over the rest), all of them if fewer."""
    if tracks.num_points <= max_points:
        return tracks
    order = np.argsort(-tracks.lengths, kind="stable")[:max_points]
    keep = np.zeros(tracks.num_points, dtype=bool)
    keep[order] = True
    return tracks.subset(keep[tracks.point])


def _model(tracks: Tracks, points: np.ndarray, poses: np.ndarray, k: np.ndarray, camera_of: np.ndarray,
           sizes: list[tuple[int, int]]) -> pycolmap.Reconstruction:
    """The pycolmap problem: camera ``v + 1`` per view, image ``i + 1`` per pose, point per track."""
    model = pycolmap.Reconstruction()
    for v, (height, width) in enumerate(sizes):
        params = [k[v, 0, 0], k[v, 1, 1], k[v, 0, 2] + COLMAP_PIXEL_OFFSET, k[v, 1, 2] + COLMAP_PIXEL_OFFSET]
        model.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=width, height=height,
                                                          params=params, camera_id=v + 1))
    index = np.empty(len(tracks.point), dtype=np.int64)  # each observation's point2D index in its image
    for i, pose in enumerate(poses):
        rows = np.flatnonzero(tracks.view == i)
        index[rows] = np.arange(len(rows))
        image = pycolmap.Image(name=f"image{i}", keypoints=tracks.xy[rows] + COLMAP_PIXEL_OFFSET,
                               camera_id=int(camera_of[i]) + 1, image_id=i + 1)
        model.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(pose[:, :3]), pose[:, 3]))
    order = np.argsort(tracks.point, kind="stable")
    starts = np.searchsorted(tracks.point[order], np.arange(tracks.num_points))
    ends = np.append(starts[1:], len(order))
    for p in range(tracks.num_points):
        track = pycolmap.Track()
        for row in order[starts[p] : ends[p]]:
            track.add_element(int(tracks.view[row]) + 1, int(index[row]))
        model.add_point3D(points[p], track)
    return model


def _solve(model: pycolmap.Reconstruction, poses: np.ndarray, options: BundleOptions) -> int:
    """Two robust passes with the outliers removed between them; returns the observations removed."""
    ba = pycolmap.BundleAdjustmentOptions()
    ba.refine_focal_length = options.refine_focal
    ba.refine_principal_point = False
    ba.refine_extra_params = False
    ba.print_summary = False
    ba.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    ba.ceres.loss_function_scale = options.loss_scale_px
    config = pycolmap.BundleAdjustmentConfig()
    # the gauge holds the first two images of the problem: the two that see the most points
    seen = sorted(model.images, key=lambda i: -model.image(i).num_points3D)
    for image_id in seen:
        if model.image(image_id).num_points3D == 0:
            continue
        config.add_image(image_id)
        if options.fixed_poses:
            config.set_constant_rig_from_world_pose(model.image(image_id).frame_id)
    if not options.fixed_poses:
        config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    observations = model.compute_num_observations()
    manager = pycolmap.ObservationManager(model)
    for _ in range(2):
        pycolmap.create_default_bundle_adjuster(ba, config, model).solve()
        manager.filter_all_points3D(options.max_error_px, 0.0)
    return observations - model.compute_num_observations()


def _read(model: pycolmap.Reconstruction, images: int, views: int) -> tuple[Tracks, np.ndarray, np.ndarray,
                                                                            np.ndarray]:
    """The kept tracks and points, the adjusted poses ``[I, 3, 4]`` and K ``[V, 3, 3]``."""
    point, image, xy, xyz = [], [], [], []
    for n, (_, p) in enumerate(sorted(model.points3D.items())):
        xyz.append(p.xyz)
        for element in p.track.elements:
            point.append(n)
            image.append(element.image_id - 1)
            xy.append(np.asarray(model.image(element.image_id).points2D[element.point2D_idx].xy))
    image = np.asarray(image, dtype=np.int64)
    time = np.full(len(image), -1, dtype=np.int64) if images == views else image // views
    kept = Tracks(np.asarray(point, dtype=np.int64), time, image % views,
                  np.asarray(xy).reshape(-1, 2) - COLMAP_PIXEL_OFFSET)
    poses = np.stack([model.image(i + 1).cam_from_world().matrix() for i in range(images)])
    k = np.stack([model.camera(v + 1).calibration_matrix() for v in range(views)])
    k[:, :2, 2] -= COLMAP_PIXEL_OFFSET
    return kept, np.asarray(xyz).reshape(-1, 3), poses, k
