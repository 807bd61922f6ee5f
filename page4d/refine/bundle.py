"""Bundle adjustment of a reconstruction's cameras on its tracks, with pycolmap (Ceres underneath).

The problem: one pinhole camera per view (K shared over time, at the view's original resolution), one image per
camera for a static rig (its observations of every step folded onto it) or one per frame otherwise, and the
tracks' points triangulated from the starting cameras. Two passes with a Cauchy loss; between them the
observations further than ``max_error_px`` from their point's projection are removed (outliers). Each group of
images that share points has a gauge of its own (a moving rig's steps share none); afterwards each is placed back
by the robust similarity that maps its cameras onto their starting poses, so the output world stays the input's,
and a group seen by too few points keeps its cameras. With a calibration's poses (``fixed_poses``) only the
points move and the cameras come out exactly as they went in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from page4d.conventions import COLMAP_PIXEL_OFFSET, colmap_pinhole_params
from page4d.interrupts import python_handlers_kept
from page4d.reconstruction.rig import fit_cameras, moved, rig_poses
from page4d.refine.tracks import Tracks, connected, image_groups

with python_handlers_kept():  # pycolmap installs glog's SIGTERM handler when it loads
    import pycolmap


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
    min_group_points: int = 30
    """Images that share fewer points than this with one another (a moving rig's step seen by few features) keep
    their cameras: a few matches, one of them wrong, would move them more than they are off."""


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
    """Mean reprojection error of the kept tracks on the starting cameras (points triangulated from them), over
    the observations in front of their camera."""
    error_after_px: float
    rejected: int
    """Observations removed as outliers."""


def onto_images(tracks: Tracks, extrinsic: np.ndarray, static: bool) -> tuple[Tracks, np.ndarray]:
    """``tracks`` (``view`` = view index) with ``view`` the image each observation belongs to, and those images'
    poses ``[I, 3, 4]`` from ``extrinsic`` ``[T, V, 3, 4]``: one image per camera for a ``static`` rig (its
    observations of every step folded onto it, its pose the robust one over the steps), else image ``t·V + v``
    per frame."""
    if static:
        return tracks.per_image(tracks.view), rig_poses(extrinsic)
    views = extrinsic.shape[1]
    return (dataclasses.replace(tracks, view=tracks.time * views + tracks.view),
            extrinsic.reshape(-1, 3, 4).astype(np.float64))


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
    each view of ``sizes`` (H, W)) on ``tracks`` (``view`` = view index). ``ValueError`` if no group of views
    shares ``min_group_points`` points."""
    steps, views = extrinsic.shape[:2]
    tracks, poses = onto_images(tracks, extrinsic, options.static)
    tracks = _capped(tracks, options.max_points)
    camera_of = np.arange(len(poses)) % views
    k = np.median(intrinsic.astype(np.float64), axis=0)  # [V, 3, 3] shared over time
    points = triangulate(tracks, poses, k[camera_of])
    model = _model(tracks, points, poses, k, camera_of, sizes)
    rejected = _solve(model, options)
    kept, kept_points, adjusted, adjusted_k = _read(model, len(poses), views)
    if options.fixed_poses:
        adjusted = poses
    by_image = dataclasses.replace(kept, view=kept.view if options.static else kept.time * views + kept.view)
    if not options.fixed_poses:
        _regauge(adjusted, kept_points, by_image, poses)
    before = reprojection_errors(triangulate(by_image, poses, k[camera_of]), by_image, poses, k[camera_of])
    after = reprojection_errors(kept_points, by_image, adjusted, adjusted_k[camera_of])
    if options.fixed_poses:  # exactly the given cameras, not their round trip through a mean and quaternions
        out = extrinsic.astype(np.float64)
    elif options.static:
        out = np.broadcast_to(adjusted[None], (steps, views, 3, 4))
    else:
        out = adjusted.reshape(steps, views, 3, 4)
    # a point triangulated from cameras far off can land behind one of them: its error there is unbounded
    return BundleResult(np.ascontiguousarray(out), adjusted_k, kept_points, kept, float(np.mean(before[
        np.isfinite(before)])), float(np.mean(after)), rejected)


def _regauge(adjusted: np.ndarray, points: np.ndarray, tracks: Tracks, start: np.ndarray) -> None:
    """Undo each group's gauge drift, in place: the images that share points (``tracks.view``: image index) are
    moved, with their points, by the similarity that best maps their adjusted cameras ``[I, 3, 4]`` back onto the
    ``start`` ones. A group fixes its cameras only up to a similarity (two cameras of one step say nothing of
    their distance); so placed, its relative poses are the adjustment's, its frame and scale the input's."""
    group = image_groups(tracks.point, tracks.view, len(adjusted))
    point_group = np.zeros(len(points), dtype=np.int64)
    point_group[tracks.point] = group[tracks.view]
    for g in np.unique(group[tracks.view]):
        members = np.flatnonzero(group == g)
        fit = fit_cameras(adjusted[members], start[members])
        adjusted[members] = moved(adjusted[members], fit)
        rows = point_group == g
        points[rows] = fit.scale * points[rows] @ fit.rotation.T + fit.translation


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
        model.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=width, height=height,
                                                          params=colmap_pinhole_params(k[v]), camera_id=v + 1))
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


def _solve(model: pycolmap.Reconstruction, options: BundleOptions) -> int:
    """Two robust passes with the outliers removed between them; returns the observations removed."""
    ba = pycolmap.BundleAdjustmentOptions()
    ba.refine_focal_length = options.refine_focal
    ba.refine_principal_point = False
    ba.refine_extra_params = False
    ba.print_summary = False
    ba.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    ba.ceres.loss_function_scale = options.loss_scale_px
    config = pycolmap.BundleAdjustmentConfig()
    components = _components(model)
    sizes = [len({p for i in component for p in _point_ids(model, i)}) for component in components]
    if not options.fixed_poses and max(sizes, default=0) < options.min_group_points:
        raise ValueError(f"no group of views shares {options.min_group_points} tracked points (the most: "
                         f"{max(sizes, default=0)}), too few to move a camera by")
    for component, size in zip(components, sizes, strict=True):
        weak = size < options.min_group_points
        for image_id in component:
            config.add_image(image_id)
            if options.fixed_poses or weak:
                config.set_constant_rig_from_world_pose(model.image(image_id).frame_id)
    if not options.fixed_poses:
        # The gauge: the largest group of images that share points keeps its two most observed cameras (its
        # frame and scale stay the input's); any other group (a moving rig's steps share no points) keeps its
        # most observed camera, else it could drift as a whole at no cost.
        config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
        for component in components[1:]:
            config.set_constant_rig_from_world_pose(model.image(component[0]).frame_id)
    observations = model.compute_num_observations()
    manager = pycolmap.ObservationManager(model)
    for _ in range(2):
        pycolmap.create_default_bundle_adjuster(ba, config, model).solve()
        manager.filter_all_points3D(options.max_error_px, 0.0)
    return observations - model.compute_num_observations()


def _point_ids(model: pycolmap.Reconstruction, image_id: int) -> set[int]:
    return {p.point3D_id for p in model.image(image_id).points2D if p.has_point3D()}


def _components(model: pycolmap.Reconstruction) -> list[list[int]]:
    """Image ids that see points, in groups linked by shared points: largest group first, each group's images by
    decreasing number of points seen."""
    seeing = [i for i in model.images if model.image(i).num_points3D > 0]
    position = {image_id: n for n, image_id in enumerate(seeing)}
    links = []
    for point in model.points3D.values():
        images = [position[e.image_id] for e in point.track.elements]
        links += [(images[0], other) for other in images[1:]]
    group = connected(len(seeing), np.asarray(links, dtype=np.int64).reshape(-1, 2))
    groups: dict[int, list[int]] = {}
    for image_id, g in zip(seeing, group, strict=True):
        groups.setdefault(int(g), []).append(image_id)
    ordered = [sorted(g, key=lambda i: -model.image(i).num_points3D) for g in groups.values()]
    return sorted(ordered, key=lambda g: (-len(g), -model.image(g[0]).num_points3D))


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


def agreeing(tracks: Tracks, extrinsic: np.ndarray, intrinsic: np.ndarray, static: bool,
             max_error_px: float) -> int:
    """How many observations of ``tracks`` (``view`` = view index) cameras ``extrinsic`` ``[T, V, 3, 4]`` and
    ``intrinsic`` ``[V, 3, 3]`` explain: each track triangulated from them, the observations within
    ``max_error_px`` of its projection (a consensus count, as RANSAC scores a model)."""
    tracks, poses = onto_images(tracks, extrinsic, static)
    k = intrinsic.astype(np.float64)[np.arange(len(poses)) % extrinsic.shape[1]]
    errors = reprojection_errors(triangulate(tracks, poses, k), tracks, poses, k)
    return int((errors <= max_error_px).sum())
