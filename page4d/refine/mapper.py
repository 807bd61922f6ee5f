"""Feature-based registration with pycolmap's incremental mapper: new starting cameras where the predicted ones are
too far off for the bundle adjustment to converge from them.

The mapper sees the rig's images (one per camera for a static rig, its keypoints of every step folded onto it, else
one per frame) with the keypoints and verified matches of the tracks, and cameras seeded with the predicted
intrinsics (kept fixed unless the focal lengths are refined). It builds the poses from the matches alone: the
predicted poses that failed are not used as priors, which would pull it back towards them. Each model it builds is
placed by the robust similarity that maps its cameras onto the predicted ones of the same images, so the world
stays the forward pass's; images it leaves unregistered keep their predicted cameras. Separate models (images the
matches do not connect) are each placed so: where they are, relative to one another, is only as good as the
predicted cameras.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from page4d.conventions import COLMAP_PIXEL_OFFSET, colmap_pinhole_params
from page4d.interrupts import python_handlers_kept
from page4d.reconstruction.rig import fit_cameras, moved
from page4d.refine.bundle import onto_images
from page4d.refine.tracks import Tracks

with python_handlers_kept():  # pycolmap installs glog's SIGTERM handler when it loads
    import pycolmap


@dataclass(frozen=True)
class Registration:
    """The mapper's cameras placed in the input's world, ``[T, V, 3, 4]`` world-to-camera (a static rig's: one per
    camera), how many of the images it registered and in how many separate models (each placed on its own)."""

    extrinsic: np.ndarray
    registered: int
    images: int
    models: int


def register(tracks: Tracks, extrinsic: np.ndarray, intrinsic: np.ndarray, sizes: list[tuple[int, int]],
             static: bool, refine_focal: bool = False, min_inliers: int = 30) -> Registration:
    """Register the images of ``tracks`` (``view`` = view index) with pycolmap's mapper; ``extrinsic``
    ``[T, V, 3, 4]`` the predicted cameras (to place the result and for the images it leaves out), ``intrinsic``
    ``[V, 3, 3]`` at the original resolution of each view of ``sizes`` (H, W). ``ValueError`` when no two images
    register: ``min_inliers`` matches are needed to start."""
    steps, views = extrinsic.shape[:2]
    images, start = onto_images(tracks, extrinsic, static)
    with tempfile.TemporaryDirectory(prefix="page4d-mapper-") as folder:
        database = Path(folder) / "database.db"
        _write_database(database, images, len(start), views, intrinsic, sizes)
        options = _options(refine_focal, min_inliers)
        models = pycolmap.incremental_mapping(str(database), folder, folder, options)
    placed, registered, used = start.copy(), np.zeros(len(start), dtype=bool), 0
    for model in sorted(models.values(), key=lambda m: -m.num_reg_images()):
        ids = [i - 1 for i in sorted(model.reg_image_ids()) if not registered[i - 1]]
        if len(ids) < 2:
            continue
        poses = np.stack([model.image(i + 1).cam_from_world().matrix() for i in ids])
        placed[ids] = moved(poses, fit_cameras(poses, start[ids]))
        registered[ids] = True
        used += 1
    if not registered.any():
        raise ValueError(f"pycolmap's mapper registered no two of the {len(start)} images (too few matches to "
                         f"start from, at least {min_inliers} between two images)")
    out = np.broadcast_to(placed[None], (steps, views, 3, 4)) if static else placed.reshape(steps, views, 3, 4)
    return Registration(np.ascontiguousarray(out), int(registered.sum()), len(start), used)


def _options(refine_focal: bool, min_inliers: int) -> pycolmap.IncrementalPipelineOptions:
    options = pycolmap.IncrementalPipelineOptions()
    options.ba_refine_focal_length = refine_focal
    options.ba_refine_principal_point = False
    options.ba_refine_extra_params = False
    options.min_model_size = 2  # a rig of few cameras: two registered views already say something
    options.min_num_matches = 8
    options.mapper.init_min_num_inliers = min_inliers
    options.mapper.abs_pose_min_num_inliers = max(min_inliers // 2, 8)
    options.triangulation.ignore_two_view_tracks = False  # a rig's cameras often share a point pairwise only
    options.extract_colors = False  # the frames are not on disk; nothing here needs colours
    options.random_seed = 0
    options.num_threads = 1  # one thread: the same tracks give the same cameras (a rig's few images map fast)
    return options


def _write_database(path: Path, tracks: Tracks, images: int, views: int, intrinsic: np.ndarray,
                    sizes: list[tuple[int, int]]) -> None:
    """A COLMAP database: a camera and a one-camera rig per view, an image and a frame per image (image ``i + 1``
    of camera ``i % views + 1``), its observations as keypoints, and each pair's shared points as verified matches
    (the tracks were verified by their own two-view geometry already)."""
    database = pycolmap.Database.open(str(path))
    try:
        rigs = []
        for v, (height, width) in enumerate(sizes):
            camera = pycolmap.Camera(model="PINHOLE", width=width, height=height, camera_id=v + 1,
                                     has_prior_focal_length=True, params=colmap_pinhole_params(intrinsic[v]))
            database.write_camera(camera, use_camera_id=True)
            rig = pycolmap.Rig()
            rig.add_ref_sensor(camera.sensor_id)
            rigs.append(database.write_rig(rig))
        index = np.empty(len(tracks.point), dtype=np.int64)  # each observation's keypoint index in its image
        for i in range(images):
            rows = np.flatnonzero(tracks.view == i)
            index[rows] = np.arange(len(rows))
            database.write_image(pycolmap.Image(name=f"image{i}", camera_id=i % views + 1, image_id=i + 1),
                                 use_image_id=True)
            frame = pycolmap.Frame()
            frame.rig_id = rigs[i % views]
            frame.add_data_id(database.read_image(i + 1).data_id)
            database.write_frame(frame)
            database.write_keypoints(i + 1, (tracks.xy[rows] + COLMAP_PIXEL_OFFSET).astype(np.float32))
        for (a, b), matches in _pair_matches(tracks, index).items():
            geometry = pycolmap.TwoViewGeometry()
            geometry.config = int(pycolmap.TwoViewGeometryConfiguration.CALIBRATED)
            geometry.inlier_matches = matches
            database.write_matches(a + 1, b + 1, matches)
            database.write_two_view_geometry(a + 1, b + 1, geometry)
    finally:
        database.close()


def _pair_matches(tracks: Tracks, index: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """``{(image a, image b): [P, 2] uint32 keypoint indices}`` for every two observations of one point, a < b."""
    order = np.lexsort((tracks.view, tracks.point))
    point, image, keypoint = tracks.point[order], tracks.view[order], index[order]
    bounds = np.flatnonzero(np.diff(point)) + 1
    pairs: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for images, keypoints in zip(np.split(image, bounds), np.split(keypoint, bounds), strict=True):
        for n in range(len(images)):
            for m in range(n + 1, len(images)):
                if images[n] != images[m]:
                    pairs.setdefault((int(images[n]), int(images[m])), []).append((keypoints[n], keypoints[m]))
    return {key: np.asarray(value, dtype=np.uint32) for key, value in pairs.items()}
