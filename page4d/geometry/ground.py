"""The ground plane of a camera rig: world up guessed from the cameras, and top-view axes on the ground.

Pure numpy, so that the browser viewer (viser) and the eval plots (matplotlib) share it without importing each
other's dependencies.
"""

from __future__ import annotations

import numpy as np

MIN_AXIS_SPREAD = 0.01
"""Camera x axes whose second principal direction holds less than this share of their spread are taken as
parallel (for two cameras: less than 11.5 degrees apart, sin²(angle / 2) < 0.01)."""
MIN_PROJECTED = 1e-6
"""A camera x axis shorter than this once projected on the ground lies along up (a camera rolled by 90°)."""


def up_direction(extrinsic: np.ndarray) -> np.ndarray:
    """``[3]`` world up guessed from world-to-camera ``extrinsic [..., 3, 4]``.

    Cameras are rarely rolled, so their x axes are horizontal whatever their pitch: up is the direction
    orthogonal to all of them, signed like the cameras' mean up axis (-y in OpenCV). When the x axes are all
    parallel (one camera, a rig facing one way) that plane is undefined and the mean up axis is used.
    """
    rotation = extrinsic[..., :3].reshape(-1, 3, 3).astype(np.float64)  # rows = camera axes in world
    mean_up = -rotation[:, 1].mean(0)
    spread, axes = np.linalg.eigh(rotation[:, 0].T @ rotation[:, 0])
    if spread[1] < MIN_AXIS_SPREAD * spread.sum():
        return mean_up / max(np.linalg.norm(mean_up), 1e-12)
    up = axes[:, 0]
    return up if up @ mean_up >= 0 else -up


def ground_axes(extrinsic: np.ndarray) -> np.ndarray:
    """``[3, 3]`` right-handed frame of a top view for world-to-camera ``extrinsic [..., 3, 4]``: rows ``right``,
    ``forward`` (both on the ground plane) and ``up`` (:func:`up_direction`).

    ``right`` is the first camera's x axis projected on the ground, so the top view is turned the way that
    camera sees the scene (it looks up the page) whatever the axes of the world frame; a first camera rolled
    by 90° falls back to the world axis closest to the ground. ``forward = up × right``.
    """
    up = up_direction(extrinsic)
    first_x = extrinsic[..., :3].reshape(-1, 3, 3)[0, 0].astype(np.float64)
    right = first_x - (first_x @ up) * up
    if np.linalg.norm(right) < MIN_PROJECTED:
        axis = np.eye(3)[np.argmin(np.abs(up))]
        right = axis - (axis @ up) * up
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(up, right), up])


def top_view(points: np.ndarray, axes: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """``[..., 2]`` (right, forward) coordinates of world ``points [..., 3]`` seen from above: the offsets from
    ``origin [3]`` along the first two rows of ``axes`` (:func:`ground_axes`); height is dropped."""
    return (np.asarray(points, np.float64) - origin) @ axes[:2].T
