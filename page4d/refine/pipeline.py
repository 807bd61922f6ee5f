"""``refine``: a reconstruction's cameras adjusted on multi-view feature tracks, its dense outputs moved with them.

The steps: SIFT keypoints of every frame at its original resolution (as the model saw it), matched between the
views of each step under the guidance of the predicted geometry and verified by their own two-view geometry
(``page4d.refine.features``); bundle adjustment of the cameras on the tracks (``page4d.refine.bundle``); then each
frame's depth and points re-expressed on its refined camera, each view's depth rescaled by the median ratio of its
tracks' refined depths to the predicted ones, so cameras, depth and points stay consistent. The predicted depth
also checks the tracks (a point off the predicted surface is a wrong match) and sets the scale of each group of
cameras that share tracks, which the adjustment leaves free.

When the adjustment from the predicted cameras fails (too few tracks found near where they put each keypoint, half
of its observations or more rejected as outliers) or turns a camera further than the guided search allows for,
the fallback matches every pair of views exhaustively, starts from the cameras pycolmap's mapper registers
(``page4d.refine.mapper``) and adjusts from them; of the two results, the one more of the exhaustive matches agree
with is kept (the report's ``method``: ``ba`` or ``mapper+ba``). Where both fail (textureless frames, a single
view, matches that agree on something wrong) :class:`RefinementError` says why and the caller keeps the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Iterator

import numpy as np

from page4d.conventions import colmap_pinhole_params
from page4d.data.clip import MultiViewClip
from page4d.devices import peak_memory_mb
from page4d.interrupts import python_handlers_kept
from page4d.reconstruction.record import Reconstruction
from page4d.reconstruction.registration import re_express_clip
from page4d.reconstruction.rig import centres, pose, rotation_angles_deg
from page4d.refine.bundle import BundleOptions, BundleResult, adjust, agreeing
from page4d.refine.features import Extractor, FrameGeometry, Keypoints, feature_tracks
from page4d.refine.mapper import register
from page4d.refine.modes import RefineOptions
from page4d.refine.tracks import TrackedPoints, Tracks, image_groups

with python_handlers_kept():  # pycolmap installs glog's SIGTERM handler when it loads
    import pycolmap


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
    bundle = BundleOptions(static=static, fixed_poses=fixed_poses, refine_focal=options.refine_focal,
                           max_error_px=options.max_error_px, max_points=options.max_points,
                           min_group_points=options.min_points)
    search = options.search_fraction * max(np.hypot(h, w) for h, w in recon.original_sizes)
    guided, failure = None, None
    try:
        guided = _adjusted(recon, _feature_tracks(recon, clip, static, options, search), recon.extrinsic, bundle,
                           options)
        turn = rotation_angles_deg(guided.extrinsic[..., :3], recon.extrinsic[..., :3].astype(np.float64))
        focal = np.median(recon.intrinsic_original[..., 0, 0].astype(np.float64), axis=0)
        followed = np.degrees(np.arctan(search / focal))  # [V] the turn that moves points by the search radius
        if (turn > followed).any():
            v = int(np.argmax(turn.max(axis=0) - followed))
            name = recon.meta.get("view_names", [f"view{w}" for w in recon.view_ids])[v]
            failure = (f"the adjustment turned {name} by {turn[:, v].max():.1f}°, further than the guided search "
                       f"could follow ({followed[v]:.1f}°)")
    except RefinementError as err:
        failure = str(err)
    if failure is None or fixed_poses or not options.fallback:
        if guided is None:
            raise RefinementError(failure)
        result, method = guided, {"method": "ba"}
    else:
        result, method = _fallback(recon, clip, static, options, bundle, guided, failure)
    before = recon.extrinsic.astype(np.float64).copy()
    scales = np.nan_to_num(depth_scales(recon, result), nan=1.0)  # a view without tracks keeps its depth
    out = {"extrinsic": recon.extrinsic, "depth": recon.depth, "world_points": recon.world_points}
    re_express_clip(out, result.extrinsic, scales)
    recon.extrinsic = out["extrinsic"]
    # the adjustment's K is one per camera (shared over time): the outputs carry it, so they agree with the tracks
    recon.intrinsic_original = np.broadcast_to(result.intrinsic, recon.intrinsic_original.shape).astype(np.float32)
    recon.intrinsic = np.stack([t.adjust_intrinsics(k) for t, k in zip(recon.transforms, result.intrinsic,
                                                                        strict=True)])
    recon.intrinsic = np.broadcast_to(recon.intrinsic, recon.extrinsic.shape[:2] + (3, 3)).astype(np.float32)
    recon.tracks = TrackedPoints(result.tracks, result.points)
    report = _report(recon, result, before, scales, time.perf_counter() - start, peak_memory_mb() - memory)
    return {**report, **method}


def _adjusted(recon: Reconstruction, tracks: Tracks, extrinsic: np.ndarray, bundle: BundleOptions,
              options: RefineOptions) -> BundleResult:
    """The adjustment of ``extrinsic`` ``[T, V, 3, 4]`` on ``tracks``, checked against the predicted depth (points
    off the predicted surfaces removed, then adjusted again); :class:`RefinementError` if too few points are
    tracked or survive, if it rejects so many observations that it cannot have converged, or if its points put the
    views of one group at depth scales too far apart. Each group of cameras comes out scaled to the predicted
    depth (:func:`scaled_to_depth`), unless the poses are fixed."""
    if tracks.num_across_views < options.min_points:
        raise RefinementError(f"only {tracks.num_across_views} points are tracked across views (at least "
                              f"{options.min_points} are needed; textureless or non-overlapping frames?)")
    result = _solved(recon, tracks, extrinsic, bundle, options)
    ratios = depth_ratios(recon, result)
    scales = depth_scales(recon, result, ratios)
    with np.errstate(invalid="ignore"):
        disagree = np.abs(np.log(ratios / scales[result.tracks.view])) > np.log(options.max_depth_disagreement)
    if disagree.any():  # the predicted depth checks the features: a match along the wrong stretch of its epipolar
        # line triangulates off the surface; such points go, and the cameras are adjusted again without them
        wrong = np.isin(result.tracks.point, result.tracks.point[disagree])
        again = _solved(recon, result.tracks.subset(~wrong), extrinsic, bundle, options)
        result = dataclasses.replace(again, rejected=result.rejected + int(wrong.sum()) + again.rejected)
    if not bundle.fixed_poses:
        result = scaled_to_depth(recon, result, bundle.static)
    scales = depth_scales(recon, result)  # each group's median is now 1: what is left is within groups
    measured = scales[np.isfinite(scales)]
    if len(measured) and measured.max() > options.max_depth_scale_spread * measured.min():
        raise RefinementError(f"the refined points lie at {measured.min():.2f} to {measured.max():.2f} times the "
                              f"predicted depth from view to view (more than {options.max_depth_scale_spread:g}x "
                              "apart): they are not the surfaces the forward pass saw")
    return result


def _solved(recon: Reconstruction, tracks: Tracks, extrinsic: np.ndarray, bundle: BundleOptions,
            options: RefineOptions) -> BundleResult:
    """:func:`adjust`, refused when too few points survive or so many observations are rejected that it cannot
    have converged."""
    try:
        result = adjust(tracks, extrinsic, recon.intrinsic_original, recon.original_sizes, bundle)
    except ValueError as err:
        raise RefinementError(str(err)) from None
    if result.tracks.num_points < options.min_points:
        raise RefinementError(f"only {result.tracks.num_points} tracked points survive the outlier rejection "
                              f"(at least {options.min_points} are needed)")
    seen = len(result.tracks.point) + result.rejected
    if result.rejected >= options.max_rejected_fraction * seen:
        raise RefinementError(f"the adjustment rejected {result.rejected} of {seen} observations as outliers "
                              f"({options.max_rejected_fraction:.0%} or more): the cameras are too far off for it, "
                              "or the matches agree on something wrong (repetitive texture?)")
    return result


def _fallback(recon: Reconstruction, clip: MultiViewClip, static: bool, options: RefineOptions,
              bundle: BundleOptions, guided: BundleResult | None, failure: str) -> tuple[BundleResult, dict]:
    """Exhaustive matches, pycolmap's mapper for new starting cameras and the adjustment from them; where the
    guided adjustment gave a result too, the one that more exhaustive matches agree with (the consensus) wins.
    Returns the result and the report's ``method`` and ``fallback``."""
    tracks = _feature_tracks(recon, clip, static, options, None)
    k = np.median(recon.intrinsic_original.astype(np.float64), axis=0)
    try:
        if tracks.num_across_views < options.min_points:
            raise RefinementError(f"only {tracks.num_across_views} points are matched across views without guidance")
        try:
            mapped = register(tracks, recon.extrinsic, k, recon.original_sizes, static, options.refine_focal,
                              options.min_points)
        except ValueError as err:
            raise RefinementError(str(err)) from None
        try:
            result = _adjusted(recon, tracks, mapped.extrinsic, bundle, options)
        except RefinementError as err:
            raise RefinementError(f"from the cameras pycolmap's mapper registered ({mapped.registered} of "
                                  f"{mapped.images} images), {err}") from None
    except RefinementError as err:
        if guided is None:
            raise RefinementError(f"from the predicted cameras, {failure}; {err}") from None
        return guided, {"method": "ba", "fallback": {"reason": failure, "failed": str(err)}}
    candidates = {"ba": guided, "mapper+ba": result} if guided is not None else {"mapper+ba": result}
    agree = {name: agreeing(tracks, r.extrinsic, r.intrinsic, static, options.max_error_px)
             for name, r in candidates.items()}
    chosen = max(agree, key=lambda name: agree[name])  # a tie keeps the guided result (first)
    return candidates[chosen], {"method": chosen, "fallback": {
        "reason": failure, "registered_images": mapped.registered, "images": mapped.images,
        "models": mapped.models, "agreeing_observations": agree}}


def _feature_tracks(recon: Reconstruction, clip: MultiViewClip, static: bool, options: RefineOptions,
                    search_px: float | None) -> Tracks:
    """SIFT tracks over ``clip``'s frames, guided by ``recon``'s geometry within ``search_px`` (None: exhaustive;
    ``page4d.refine.features``)."""
    transforms, sizes = recon.transforms, recon.original_sizes
    extractor = Extractor(options.max_features)
    k = np.median(recon.intrinsic_original.astype(np.float64), axis=0)
    cameras = [pycolmap.Camera(model="PINHOLE", width=w, height=h, params=colmap_pinhole_params(k[v]))
               for v, (h, w) in enumerate(sizes)]

    def frame(t: int) -> tuple[list[Keypoints], list[FrameGeometry]]:
        keypoints = [extractor(clip.load_original(t, v).mean(axis=2) / 255) for v in range(recon.num_views)]
        moving = None if recon.dynamic_mask is None else np.asarray(recon.dynamic_mask[t]) > 0.5
        geometry = [FrameGeometry(np.asarray(recon.depth[t, v]), transforms[v].map_pixels,
                                  recon.extrinsic[t, v].astype(np.float64),
                                  recon.intrinsic_original[t, v].astype(np.float64),
                                  None if moving is None else moving[v]) for v in range(recon.num_views)]
        return keypoints, geometry

    return feature_tracks(recon.num_times, frame, cameras, static, search_px)


def depth_ratios(recon: Reconstruction, result: BundleResult) -> np.ndarray:
    """``[M]`` for each kept observation, the refined point's depth in its refined camera over the predicted depth
    at the observed pixel (a static rig's observation: the median over the steps; nan where there is none)."""
    tracks, transforms = result.tracks, recon.transforms
    height, width = recon.size
    ratios = np.full((recon.num_times, len(tracks.point)), np.nan)
    for v in range(recon.num_views):
        rows = np.flatnonzero(tracks.view == v)
        grid = np.rint(transforms[v].map_pixels(tracks.xy[rows])).astype(np.int64)
        inside = (grid[:, 0] >= 0) & (grid[:, 0] < width) & (grid[:, 1] >= 0) & (grid[:, 1] < height)
        rows, grid = rows[inside], grid[inside]
        for t in range(recon.num_times):
            at = (tracks.time[rows] == t) | (tracks.time[rows] < 0)
            pose = result.extrinsic[t, v]
            refined = result.points[tracks.point[rows[at]]] @ pose[2, :3] + pose[2, 3]
            predicted = np.asarray(recon.depth[t, v])[grid[at, 1], grid[at, 0]]
            good = (predicted > 0) & (refined > 0)
            ratios[t, rows[at][good]] = refined[good] / predicted[good]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an observation seen at no step: an all-nan column
        return np.nanmedian(ratios, axis=0)


def scaled_to_depth(recon: Reconstruction, result: BundleResult, static: bool) -> BundleResult:
    """``result`` with each group of images that share points (its own gauge) scaled, cameras and points together
    about its cameras' centroid, so that its points' median depth is the predicted one: a group's scale is free in
    the adjustment and only set by where its starting cameras were, and views outside it keep their predicted
    depth, so matching it to the depth keeps all views' depths on one scale. Reprojections do not change."""
    views, tracks = recon.num_views, result.tracks
    image = tracks.view if static else tracks.time * views + tracks.view
    cameras = (result.extrinsic[0] if static else result.extrinsic.reshape(-1, 3, 4)).astype(np.float64).copy()
    group = image_groups(tracks.point, image, len(cameras))
    ratios, points = depth_ratios(recon, result), result.points.copy()
    point_group = np.zeros(len(points), dtype=np.int64)
    point_group[tracks.point] = group[image]
    for g in np.unique(group[image]):
        measured = ratios[(group[image] == g) & np.isfinite(ratios)]
        if len(measured) < 3:
            continue
        scale, members = float(np.median(measured)), np.flatnonzero(group == g)
        centroid = centres(cameras[members]).mean(axis=0)
        placed = centroid + (centres(cameras[members]) - centroid) / scale
        cameras[members] = np.stack([pose(c[:, :3], x) for c, x in zip(cameras[members], placed, strict=True)])
        rows = point_group == g
        points[rows] = centroid + (points[rows] - centroid) / scale
    steps = recon.num_times
    extrinsic = np.broadcast_to(cameras[None], (steps, views, 3, 4)) if static else cameras.reshape(steps, views, 3,
                                                                                                     4)
    return dataclasses.replace(result, extrinsic=np.ascontiguousarray(extrinsic), points=points)


def depth_scales(recon: Reconstruction, result: BundleResult, ratios: np.ndarray | None = None) -> np.ndarray:
    """``[V]`` median of each view's :func:`depth_ratios` (nan for a view with fewer than 3 of them)."""
    ratios = depth_ratios(recon, result) if ratios is None else ratios
    scales = np.full(recon.num_views, np.nan)
    for v in range(recon.num_views):
        mine = ratios[(result.tracks.view == v) & np.isfinite(ratios)]
        if len(mine) >= 3:
            scales[v] = float(np.median(mine))
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
        "status": "refined",
        "points": int(result.tracks.num_points), "observations": int(len(result.tracks.point)),
        "mean_track_length": round(float(lengths.mean()), 3), "rejected_observations": int(result.rejected),
        "reprojection_error_px": {"before": round(result.error_before_px, 4),
                                  "after": round(result.error_after_px, 4)},
        "cameras_moved": {name: {"rotation_deg": round(float(np.median(rotation[:, v])), 4),
                                 "centre": round(float(np.median(shift[:, v])), 6),
                                 "depth_scale": round(float(scales[v]), 5)} for v, name in enumerate(names)},
        "seconds": round(seconds, 3), "peak_memory_added_mb": round(max(memory_mb, 0.0), 1),
    }
