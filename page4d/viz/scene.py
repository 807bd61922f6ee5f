"""What the 4D viewer draws, in pure numpy: the points of each time step, the live confidence and camera filters,
their colours, the camera poses and the opening view. :mod:`page4d.viz.viewer` only uploads these arrays.

Decimation: every valid point of a time step (``select_points`` at the 0th percentile) is split into static
(``dynamic_mask <= MOVING_THRESHOLD``) and moving points, then thinned by a seeded random subset: at most
``max_points_per_step`` moving points per step and ``max_background_points // T`` static points per step, whose
union over the clip is the background drawn at every step. Without a dynamic mask every point is per-step. The
confidence threshold is applied after thinning, per step, exactly as the exports apply it (a point is kept when
its confidence is at or above the ``p``-th percentile of its step's valid confidences), so moving the slider
re-filters the same points instead of reading the reconstruction again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from page4d.export.points import MAX_MOVING_POINTS, MAX_STATIC_POINTS, PointSelection, select_points
from page4d.geometry.unprojection import camera_to_world
from page4d.reconstruction.record import Reconstruction

COLOR_MODES = ("rgb", "confidence", "dynamic mask")
CONF_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)
"""Low -> high confidence (viridis anchors)."""
MASK_RAMP = np.array([[120, 130, 150], [235, 40, 40]], np.float64)
"""Static (grey-blue) -> moving (red) probability."""
FRAMED_SHARE = 50.0
"""Percentage of the points, nearest the scene's centre, that the opening view keeps inside its field of view
with every camera. Not more: a reconstruction's far walls and stray depths hold a quarter of its points or more
(the tabletop clip: the 75th percentile lies 3 to 4 times farther out than the median), and framing them all
shrinks the scene the cameras look at to a few pixels."""
ELEVATION = np.radians(30.0)
"""How far above the reference camera's horizon the opening view looks down on the scene."""
NEAR = 0.5
"""Points closer to the eye than this share of its distance to the target count as crowding the view: they are
drawn many times larger than the scene (point sizes are in world units)."""
MAX_NEAR_SHARE = 0.005
"""The opening view backs away until at most this share of the points crowd it."""
BACK_OFF = 1.25
MAX_BACK_OFF = 12


@dataclass
class StepLayer:
    """What one time step contributes to the scene, before the confidence threshold."""

    static: PointSelection
    """This step's share of the accumulated background; empty without a mask."""
    dynamic: PointSelection
    """Shown only while this step is selected (moving points, or every point without a mask)."""
    levels: np.ndarray
    """``[N]`` float32 confidence of every valid pixel of the step (before thinning): the percentiles' reference."""


def step_layers(
    recon: Reconstruction,
    *,
    max_points_per_step: int = MAX_MOVING_POINTS,
    max_background_points: int = MAX_STATIC_POINTS,
) -> list[StepLayer]:
    """One :class:`StepLayer` per time step (``recon.time_ids`` order), thinned as the module docstring says."""
    if max_points_per_step < 1 or max_background_points < 1:
        raise ValueError(f"point limits must be positive, got {max_points_per_step} and {max_background_points}")
    static_limit = max(1, max_background_points // recon.num_times)
    layers = []
    for t in range(recon.num_times):
        points = select_points(recon, t, source="depth", conf_percentile=0.0)
        is_dynamic = np.ones(len(points), bool) if recon.dynamic_mask is None else points.moving
        layers.append(StepLayer(static=points.subset(~is_dynamic).sample(static_limit),
                                dynamic=points.subset(is_dynamic).sample(max_points_per_step), levels=points.conf))
    return layers


@dataclass
class ScenePoints:
    """The drawable points of every step, filtered on demand by confidence percentile and visible cameras."""

    layers: list[StepLayer]
    background: PointSelection = field(init=False)
    """Every step's ``static`` points, concatenated."""
    background_step: np.ndarray = field(init=False)
    """``[N]`` time step index of each background point."""
    _thresholds: dict[float, np.ndarray] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.background = PointSelection.concat([layer.static for layer in self.layers])
        self.background_step = np.repeat(np.arange(len(self.layers)), [len(x.static) for x in self.layers])

    def thresholds(self, percentile: float) -> np.ndarray:
        """``[T]`` confidence at the ``percentile``-th percentile of each step's valid pixels (cached)."""
        key = float(percentile)
        if key not in self._thresholds:
            self._thresholds[key] = np.array([np.percentile(x.levels, key) if len(x.levels) else -np.inf
                                              for x in self.layers])
        return self._thresholds[key]

    def static_points(self, percentile: float, views: np.ndarray) -> PointSelection:
        """The background at or above each step's ``percentile``, from the cameras where ``views [V]`` is True."""
        keep = self.background.conf >= self.thresholds(percentile)[self.background_step]
        return self.background.subset(keep & views[self.background.view])

    def moving_points(self, t: int, percentile: float, views: np.ndarray) -> PointSelection:
        """Step index ``t``'s per-step points at or above its ``percentile``, from the cameras where ``views``."""
        layer = self.layers[t].dynamic
        return layer.subset((layer.conf >= self.thresholds(percentile)[t]) & views[layer.view])

    def conf_range(self) -> tuple[float, float]:
        """Colour range of the confidence mode: 2nd and 98th percentiles of every drawable point's confidence."""
        conf = np.concatenate([self.background.conf, *(x.dynamic.conf for x in self.layers)])
        return (0.0, 1.0) if len(conf) == 0 else tuple(float(q) for q in np.percentile(conf, (2.0, 98.0)))


def _ramp(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """``[N]`` values in [0, 1] -> ``[N, 3]`` uint8, piecewise linear through evenly spaced ``anchors [K, 3]``."""
    stops = np.linspace(0.0, 1.0, len(anchors))
    return np.stack([np.interp(values, stops, anchors[:, c]) for c in range(3)], -1).round().astype(np.uint8)


def point_colors(layer: PointSelection, mode: str, value_range: tuple[float, float]) -> np.ndarray:
    """``[N, 3]`` uint8 colours of ``layer`` in one of ``COLOR_MODES``; ``value_range`` scales confidence."""
    if mode == "rgb":
        return layer.rgb
    if mode == "confidence":
        low, high = value_range
        return _ramp(np.clip((layer.conf - low) / max(high - low, 1e-12), 0.0, 1.0), CONF_RAMP)
    if mode == "dynamic mask":
        return _ramp(np.clip(layer.mask, 0.0, 1.0), MASK_RAMP)
    raise ValueError(f"colour mode must be one of {COLOR_MODES}, got {mode!r}")


def camera_centres(extrinsic: np.ndarray) -> np.ndarray:
    """``[..., 3]`` world positions of the cameras of world-to-camera ``extrinsic [..., 3, 4]``."""
    return camera_to_world(extrinsic)[..., :3, 3]


def opening_view(
    points: np.ndarray, extrinsic: np.ndarray, up: np.ndarray, fov: float
) -> tuple[np.ndarray, np.ndarray]:
    """Eye position and look-at target ``[3]`` of the first view of the scene.

    ``points [N, 3]`` are what is drawn, ``extrinsic [T, V, 3, 4]`` every camera (index (0, 0) is the reference),
    ``up [3]`` the world up and ``fov`` the viewer's vertical field of view in radians. The target is the
    points' per-axis median; the eye looks the way the reference camera looks, from behind it and ``ELEVATION``
    above, far enough back that every camera and the ``FRAMED_SHARE`` % of the points nearest the target fit in
    the field of view; then backs away (by ``BACK_OFF``, at most ``MAX_BACK_OFF`` times) while more than
    ``MAX_NEAR_SHARE`` of the points lie within ``NEAR`` of that distance from the eye: a reconstruction's
    points often reach behind the reference camera (walls, a stretched floor), and opening among them shows a
    screen of huge points instead of the scene.
    """
    centres = camera_centres(extrinsic).reshape(-1, 3)
    centres = centres[np.isfinite(centres).all(-1)]
    cloud = points if len(points) else centres
    if len(cloud) == 0:  # nothing to frame (no valid point, no finite camera): look at the origin
        cloud = np.zeros((1, 3))
    target = np.median(cloud, axis=0)
    radius = max(float(np.percentile(np.linalg.norm(cloud - target, axis=-1), FRAMED_SHARE)),
                 float(np.linalg.norm(centres - target, axis=-1).max(initial=0.0)), 1e-6)
    forward = extrinsic[0, 0, 2, :3].astype(np.float64)  # the reference camera's optical axis in the world
    level = forward - (forward @ up) * up
    if np.linalg.norm(level) < 1e-6:  # looking straight down or up: keep its image's "down" at the bottom
        level = extrinsic[0, 0, 1, :3].astype(np.float64) * np.sign(forward @ up)
    level /= np.linalg.norm(level)
    direction = -np.cos(ELEVATION) * level + np.sin(ELEVATION) * up
    distance = radius / np.sin(fov / 2)
    for _ in range(MAX_BACK_OFF):
        crowding = np.linalg.norm(cloud - (target + distance * direction), axis=-1) < NEAR * distance
        if crowding.mean() <= MAX_NEAR_SHARE:
            break
        distance *= BACK_OFF
    return target + distance * direction, target
