"""Feature tracks: SIFT keypoints (pycolmap) matched between the views of each time step, guided by the predicted
geometry and verified by a two-view geometry of their own, then joined into tracks.

For each pair of views, a keypoint's candidates in the other view are those near where the predicted depth and
cameras put it (``search_px``; wide enough for cameras some degrees off); the best candidate by descriptor wins if
it is clearly better than the second (ratio test) and the choice is mutual. pycolmap's RANSAC two-view geometry
then keeps the matches that one epipolar geometry explains, so a wrong prediction cannot make its own matches.
For a static rig, a camera's keypoints at consecutive steps that sit on the same pixel with the same descriptor
are the same static point, which joins the tracks of all steps. Keypoints on moving pixels (the dynamic mask)
are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from page4d.conventions import COLMAP_PIXEL_OFFSET
from page4d.interrupts import python_handlers_kept
from page4d.refine.tracks import Tracks, from_matches

with python_handlers_kept():  # pycolmap installs glog's SIGTERM handler when it loads
    import pycolmap

MIN_MATCHES = 8
"""Fewer verified matches than this between two views are dropped (a two-view geometry needs them)."""


@dataclass(frozen=True)
class Keypoints:
    """One frame's keypoints: ``xy`` ``[K, 2]`` original-resolution pixels, ``descriptors`` ``[K, 128]`` unit
    float32."""

    xy: np.ndarray
    descriptors: np.ndarray


@dataclass(frozen=True)
class FrameGeometry:
    """What the forward pass says of one frame, to guide the matching: ``depth`` ``[H, W]`` at the pixels
    ``to_grid`` maps original pixels to, ``extrinsic`` ``[3, 4]``, ``intrinsic`` ``[3, 3]`` (original), and
    ``moving`` ``[H, W]`` bool or None."""

    depth: np.ndarray
    to_grid: Callable[[np.ndarray], np.ndarray]
    extrinsic: np.ndarray
    intrinsic: np.ndarray
    moving: np.ndarray | None


class Extractor:
    """Affine-adapted SIFT on grey images in [0, 1] (pycolmap's CPU extractor), at most ``max_features`` per
    image."""

    def __init__(self, max_features: int = 4096, peak_threshold: float = 0.002):
        options = pycolmap.FeatureExtractionOptions()
        options.sift.max_num_features = max_features
        options.sift.peak_threshold = peak_threshold  # lower than COLMAP's default: rig frames are often plain
        # affine-adapted regions: a rig's views are often 50-100° apart, where plain SIFT finds few true matches
        # (tabletop4v's pair 103° apart: 4 → 27 over two steps, at a quarter more extraction time)
        options.sift.estimate_affine_shape = True
        options.use_gpu = False
        self.extractor = pycolmap.FeatureExtractor.create(options)

    def __call__(self, grey: np.ndarray) -> Keypoints:
        keypoints, descriptors = self.extractor.extract_from_float32_array(np.ascontiguousarray(grey, np.float32))
        xy = np.array([[k.x, k.y] for k in keypoints], dtype=np.float64).reshape(-1, 2) - COLMAP_PIXEL_OFFSET
        values = descriptors.data.astype(np.float32).reshape(-1, 128)
        return Keypoints(xy, values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-9))


def predicted_positions(xy: np.ndarray, source: FrameGeometry, target: FrameGeometry) -> np.ndarray:
    """``[K, 2]`` where the predicted depth and cameras put ``source`` pixels ``xy`` in ``target`` (nan where the
    depth is missing or the point falls behind the camera)."""
    grid = np.rint(source.to_grid(xy)).astype(np.int64)
    height, width = source.depth.shape
    inside = (grid[:, 0] >= 0) & (grid[:, 0] < width) & (grid[:, 1] >= 0) & (grid[:, 1] < height)
    z = np.full(len(xy), np.nan)
    z[inside] = source.depth[grid[inside, 1], grid[inside, 0]]
    z[~(z > 0)] = np.nan
    camera = np.c_[xy, np.ones(len(xy))] @ np.linalg.inv(source.intrinsic).T * z[:, None]
    world = (camera - source.extrinsic[:, 3]) @ source.extrinsic[:, :3]
    seen = world @ target.extrinsic[:, :3].T + target.extrinsic[:, 3]
    pixel = seen @ target.intrinsic.T
    with np.errstate(divide="ignore", invalid="ignore"):
        out = pixel[:, :2] / pixel[:, 2:]
    out[~(seen[:, 2] > 0)] = np.nan
    return out


def mutual_matches(a: Keypoints, b: Keypoints, allowed: np.ndarray | None, ratio: float = 0.8) -> np.ndarray:
    """``[P, 2]`` indices of mutual nearest neighbours by descriptor that pass the ratio test, among the pairs
    ``allowed`` (bool ``[Ka, Kb]``, None: all)."""
    if len(a.xy) < 2 or len(b.xy) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    distance = torch.cdist(torch.from_numpy(a.descriptors), torch.from_numpy(b.descriptors)).numpy()
    if allowed is not None:
        distance = np.where(allowed, distance, np.inf)
    order = np.argsort(distance, axis=1)[:, :2]
    rows = np.arange(len(a.xy))
    best, second = distance[rows, order[:, 0]], distance[rows, order[:, 1]]
    back = np.argmin(distance, axis=0)
    good = np.isfinite(best) & (best < ratio * second) & (back[order[:, 0]] == rows)
    return np.stack([rows[good], order[good, 0]], axis=1)


def verified(a: Keypoints, b: Keypoints, pairs: np.ndarray, camera_a: pycolmap.Camera,
             camera_b: pycolmap.Camera) -> np.ndarray:
    """The ``pairs`` one two-view geometry explains (pycolmap's RANSAC; too few: none)."""
    if len(pairs) < MIN_MATCHES:
        return pairs[:0]
    options = pycolmap.TwoViewGeometryOptions()
    options.ransac.random_seed = 0  # the same frames give the same tracks, run after run
    geometry = pycolmap.estimate_two_view_geometry(camera_a, a.xy + COLMAP_PIXEL_OFFSET, camera_b,
                                                   b.xy + COLMAP_PIXEL_OFFSET, pairs.astype(np.uint32), options)
    inliers = np.asarray(geometry.inlier_matches, dtype=np.int64).reshape(-1, 2)
    return inliers if len(inliers) >= MIN_MATCHES else pairs[:0]


def feature_tracks(steps: int, frame: Callable[[int], tuple[list[Keypoints], list[FrameGeometry]]],
                   cameras: list[pycolmap.Camera], static: bool, search_px: float | None) -> Tracks:
    """Tracks over ``steps`` time steps, ``frame(t)`` giving each view's keypoints and geometry at step ``t``:
    matches between every pair of views of each step (within ``search_px`` of the predicted position; None:
    exhaustive, the geometry only says which pixels move), and for a ``static`` rig between a camera's
    consecutive steps; moving keypoints left out. Only two steps' keypoints are held at a time."""
    views = len(cameras)
    pairs, xy, frames, offset = [], [], [], 0
    previous: list[Keypoints] | None = None
    previous_offsets: list[int] = []
    for t in range(steps):
        keypoints, geometry = frame(t)
        kept = [_static_only(k, g) for k, g in zip(keypoints, geometry, strict=True)]
        offsets = list(offset + np.cumsum([0] + [len(k.xy) for k in kept[:-1]]))
        for v in range(views):
            for w in range(v + 1, views):
                a, b = kept[v], kept[w]
                near = None if search_px is None else _distances(
                    predicted_positions(a.xy, geometry[v], geometry[w]), b.xy) < search_px
                found = verified(a, b, mutual_matches(a, b, near), cameras[v], cameras[w])
                pairs.append(found + [offsets[v], offsets[w]])
            if static and previous is not None:
                a, b = previous[v], kept[v]
                same = _distances(a.xy, b.xy) < 1.0
                pairs.append(mutual_matches(a, b, same) + [previous_offsets[v], offsets[v]])
        for v, k in enumerate(kept):
            xy.append(k.xy)
            frames.append(np.full(len(k.xy), t * views + v))
        offset += sum(len(k.xy) for k in kept)
        previous, previous_offsets = kept, offsets
    frame_of = np.concatenate(frames) if frames else np.zeros(0, dtype=np.int64)
    joined = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    track = from_matches(frame_of, joined)
    keep = track >= 0
    _, point = np.unique(track[keep], return_inverse=True)
    every = np.concatenate(xy) if xy else np.zeros((0, 2))
    return Tracks(point.astype(np.int64), frame_of[keep] // views, frame_of[keep] % views, every[keep])


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[Ka, Kb]`` pixel distances (nan rows stay nan: never near)."""
    return torch.cdist(torch.from_numpy(a).float(), torch.from_numpy(b).float()).numpy()


def _static_only(keypoints: Keypoints, geometry: FrameGeometry) -> Keypoints:
    """The keypoints that do not sit on a moving pixel."""
    if geometry.moving is None or not len(keypoints.xy):
        return keypoints
    grid = np.rint(geometry.to_grid(keypoints.xy)).astype(np.int64)
    height, width = geometry.moving.shape
    grid[:, 0], grid[:, 1] = grid[:, 0].clip(0, width - 1), grid[:, 1].clip(0, height - 1)
    still = ~geometry.moving[grid[:, 1], grid[:, 0]]
    return Keypoints(keypoints.xy[still], keypoints.descriptors[still])
