"""``refine``: a reconstruction's cameras adjusted on multi-view feature tracks, its dense outputs moved with them.

The steps: SIFT keypoints of every frame at its original resolution (as the model saw it), matched between the
views of each step under the guidance of the predicted geometry and verified by their own two-view geometry
(``page4d.refine.features``); bundle adjustment of the cameras on the tracks (``page4d.refine.bundle``); then each
frame's depth and points re-expressed on its refined camera, each view's depth rescaled by the median ratio of its
tracks' refined depths to the predicted ones, so cameras, depth and points stay consistent. Where the tracks are
too few (textureless frames, a single view) :class:`RefinementError` says why and the caller keeps the result
as it was.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np
import pycolmap

from page4d.conventions import COLMAP_PIXEL_OFFSET
from page4d.data.clip import MultiViewClip
from page4d.devices import peak_memory_mb
from page4d.reconstruction.record import Reconstruction
from page4d.reconstruction.registration import re_express_clip
from page4d.reconstruction.rig import centres, rotation_angles_deg
from page4d.refine.bundle import BundleOptions, BundleResult, adjust
from page4d.refine.features import Extractor, FrameGeometry, Keypoints, feature_tracks
from page4d.refine.modes import RefineOptions
from page4d.refine.tracks import TrackedPoints, Tracks


class RefinementError(ValueError):
    """The refinement could not run (the message says why); the reconstruction is left as it was."""


def refine_reconstruction(recon: Reconstruction, clip: MultiViewClip, static: bool, fixed_poses: bool,
                          options: RefineOptions | None = None) -> dict:
    """Refine ``recon`` (in place) on tracks over ``clip``'s frames; returns the report for ``meta["refine"]``.

    ``static``: one pose per camera (a static rig); ``fixed_poses``: the cameras are a calibration's and stay as
    they are (only the points and the depth scales are fitted). Raises :class:`RefinementError`."""
    with _quiet_colmap():  # the run reports what matters; COLMAP's info lines would land in the middle of it
        return _refine(recon, clip, static, fixed_poses, options or RefineOptions())


@contextlib.contextmanager
def _quiet_colmap() -> Iterator[None]:
    """pycolmap's (glog) messages below ERROR silenced for the block, the level restored after it."""
    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = level


def _refine(recon: Reconstruction, clip: MultiViewClip, static: bool, fixed_poses: bool,
            options: RefineOptions) -> dict:
    start, memory = time.perf_counter(), peak_memory_mb()
    if recon.num_views < 2:
        raise RefinementError("a single view: tracks need the same point seen by two cameras")
    tracks = _feature_tracks(recon, clip, static, options)
    if tracks.num_across_views < options.min_points:
        raise RefinementError(f"only {tracks.num_across_views} points are tracked across views (at least "
                              f"{options.min_points} are needed; textureless or non-overlapping frames?)")
    bundle = BundleOptions(static=static, fixed_poses=fixed_poses, refine_focal=options.refine_focal,
                           max_error_px=options.max_error_px, max_points=options.max_points,
                           min_group_points=options.min_points)
    try:
        result = adjust(tracks, recon.extrinsic, recon.intrinsic_original, recon.original_sizes, bundle)
    except ValueError as err:
        raise RefinementError(str(err)) from None
    if result.tracks.num_points < options.min_points:
        raise RefinementError(f"only {result.tracks.num_points} tracked points survive the outlier rejection "
                              f"(at least {options.min_points} are needed)")
    before = recon.extrinsic.astype(np.float64).copy()
    scales = depth_scales(recon, result)
    out = {"extrinsic": recon.extrinsic, "depth": recon.depth, "world_points": recon.world_points}
    re_express_clip(out, result.extrinsic, scales)
    recon.extrinsic = out["extrinsic"]
    # the adjustment's K is one per camera (shared over time): the outputs carry it, so they agree with the tracks
    recon.intrinsic_original = np.broadcast_to(result.intrinsic, recon.intrinsic_original.shape).astype(np.float32)
    recon.intrinsic = np.stack([t.adjust_intrinsics(k) for t, k in zip(recon.transforms, result.intrinsic,
                                                                        strict=True)])
    recon.intrinsic = np.broadcast_to(recon.intrinsic, recon.extrinsic.shape[:2] + (3, 3)).astype(np.float32)
    recon.tracks = TrackedPoints(result.tracks, result.points)
    return _report(recon, result, before, scales, time.perf_counter() - start, peak_memory_mb() - memory)


def _feature_tracks(recon: Reconstruction, clip: MultiViewClip, static: bool, options: RefineOptions) -> Tracks:
    """SIFT tracks over ``clip``'s frames, guided by ``recon``'s geometry (``page4d.refine.features``)."""
    transforms, sizes = recon.transforms, recon.original_sizes
    extractor = Extractor(options.max_features)
    k = np.median(recon.intrinsic_original.astype(np.float64), axis=0)
    cameras = [pycolmap.Camera(model="PINHOLE", width=w, height=h, params=[
        k[v, 0, 0], k[v, 1, 1], k[v, 0, 2] + COLMAP_PIXEL_OFFSET, k[v, 1, 2] + COLMAP_PIXEL_OFFSET])
        for v, (h, w) in enumerate(sizes)]

    def frame(t: int) -> tuple[list[Keypoints], list[FrameGeometry]]:
        keypoints = [extractor(clip.load_original(t, v).mean(axis=2) / 255) for v in range(recon.num_views)]
        moving = None if recon.dynamic_mask is None else np.asarray(recon.dynamic_mask[t]) > 0.5
        geometry = [FrameGeometry(np.asarray(recon.depth[t, v]), transforms[v].map_pixels,
                                  recon.extrinsic[t, v].astype(np.float64),
                                  recon.intrinsic_original[t, v].astype(np.float64),
                                  None if moving is None else moving[v]) for v in range(recon.num_views)]
        return keypoints, geometry

    search = options.search_fraction * max(np.hypot(h, w) for h, w in sizes)
    return feature_tracks(recon.num_times, frame, cameras, static, search)


def depth_scales(recon: Reconstruction, result: BundleResult) -> np.ndarray:
    """``[V]`` median ratio, over each view's observations, of the refined point's depth in its refined camera to
    the predicted depth at the observed pixel (1 for a view with fewer than 3 usable observations). A static
    rig's observations count at every step."""
    tracks, transforms = result.tracks, recon.transforms
    height, width = recon.size
    scales = np.ones(recon.num_views)
    for v in range(recon.num_views):
        rows = np.flatnonzero(tracks.view == v)
        grid = np.rint(transforms[v].map_pixels(tracks.xy[rows])).astype(np.int64)
        inside = (grid[:, 0] >= 0) & (grid[:, 0] < width) & (grid[:, 1] >= 0) & (grid[:, 1] < height)
        rows, grid = rows[inside], grid[inside]
        ratios = []
        for t in range(recon.num_times):
            at = (tracks.time[rows] == t) | (tracks.time[rows] < 0)
            pose = result.extrinsic[t, v]
            refined = result.points[tracks.point[rows[at]]] @ pose[2, :3] + pose[2, 3]
            predicted = np.asarray(recon.depth[t, v])[grid[at, 1], grid[at, 0]]
            good = (predicted > 0) & (refined > 0)
            ratios.append(refined[good] / predicted[good])
        ratios = np.concatenate(ratios) if ratios else np.zeros(0)
        if len(ratios) >= 3:
            scales[v] = float(np.median(ratios))
    return scales


def _report(recon: Reconstruction, result: BundleResult, before: np.ndarray, scales: np.ndarray, seconds: float,
            memory_mb: float) -> dict:
    """``meta["refine"]``: the tracks, the errors before and after, how far each camera moved."""
    after = recon.extrinsic.astype(np.float64)
    names = recon.meta.get("view_names", [f"view{v}" for v in recon.view_ids])
    rotation = rotation_angles_deg(after[..., :3], before[..., :3])
    shift = np.linalg.norm(centres(after) - centres(before), axis=-1)
    lengths = result.tracks.lengths
    return {
        "status": "refined", "method": "ba",
        "points": int(result.tracks.num_points), "observations": int(len(result.tracks.point)),
        "mean_track_length": round(float(lengths.mean()), 3), "rejected_observations": int(result.rejected),
        "reprojection_error_px": {"before": round(result.error_before_px, 4),
                                  "after": round(result.error_after_px, 4)},
        "cameras_moved": {name: {"rotation_deg": round(float(np.median(rotation[:, v])), 4),
                                 "centre": round(float(np.median(shift[:, v])), 6),
                                 "depth_scale": round(float(scales[v]), 5)} for v, name in enumerate(names)},
        "seconds": round(seconds, 3), "peak_memory_added_mb": round(max(memory_mb, 0.0), 1),
    }
