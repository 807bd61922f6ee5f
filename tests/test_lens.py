"""Lens distortion is removed as OpenCV's own projection says: a dot the distorted camera records where
``cv2.projectPoints`` (with the coefficients) puts it lands, after ``Lens.undistort``, where the pinhole projection
(no coefficients) puts it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from page4d.data.lens import Lens

SIZE = (320, 240)
K = np.array([[260.0, 0.0, 161.5], [0.0, 255.0, 118.0], [0.0, 0.0, 1.0]])


def _points() -> np.ndarray:
    """3-D points in front of the camera on a grid over the image (corners included, where distortion is largest),
    far enough apart that their dots never touch."""
    u, v = np.meshgrid(np.linspace(18, SIZE[0] - 18, 7), np.linspace(18, SIZE[1] - 18, 5))
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    rays = np.linalg.solve(K, np.concatenate([uv, np.ones((len(uv), 1))], axis=1).T).T
    return rays * np.random.default_rng(3).uniform(2, 5, size=(len(uv), 1))


def _dots(centres: np.ndarray) -> Image.Image:
    """Grey frame with a small bright Gaussian dot at each sub-pixel centre."""
    v, u = np.mgrid[0 : SIZE[1], 0 : SIZE[0]]
    img = np.zeros(SIZE[::-1])
    for cu, cv in centres:
        img += np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * 1.5**2))
    return Image.fromarray(np.repeat((np.clip(img, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2))


def _centroids(img: Image.Image, near: np.ndarray, radius: int = 5) -> np.ndarray:
    grey = np.asarray(img)[..., 0].astype(np.float64)
    out = []
    for cu, cv in near:
        u0, v0 = int(round(cu)), int(round(cv))
        patch = grey[v0 - radius : v0 + radius + 1, u0 - radius : u0 + radius + 1]
        dv, du = np.mgrid[-radius : radius + 1, -radius : radius + 1]
        out.append([u0 + (patch * du).sum() / patch.sum(), v0 + (patch * dv).sum() / patch.sum()])
    return np.asarray(out)


@pytest.mark.parametrize("distortion", [[-0.25, 0.07, 0.0, 0.0], [0.12, -0.03, 0.002, -0.0015]])
def test_undistorted_dots_land_where_the_pinhole_projects_them(distortion):
    points = _points()
    zero = np.zeros(3)
    recorded, _ = cv2.projectPoints(points, zero, zero, K, np.array(distortion))
    pinhole, _ = cv2.projectPoints(points, zero, zero, K, np.zeros(4))
    recorded, pinhole = recorded[:, 0], pinhole[:, 0]
    inside = np.all((pinhole > 8) & (pinhole < np.array(SIZE) - 8), axis=1) & np.all(
        (recorded > 8) & (recorded < np.array(SIZE) - 8), axis=1)
    lens = Lens(K, np.array(distortion), SIZE)
    frame = _dots(recorded[inside])
    undistorted = lens.undistort(frame)
    assert undistorted.size == frame.size
    shift = np.linalg.norm(recorded[inside] - pinhole[inside], axis=1)
    assert shift.max() > 3, "the coefficients must move the dots for the test to mean anything"
    error = np.linalg.norm(_centroids(undistorted, pinhole[inside]) - pinhole[inside], axis=1)
    assert error.max() < 0.25
    # left as recorded, the dots are where the distortion put them, not where the pinhole camera sees them
    with np.errstate(invalid="ignore"):  # a dot moved out of the window around its pinhole position: no centroid
        left = np.linalg.norm(_centroids(frame, pinhole[inside]) - pinhole[inside], axis=1)
    assert np.median(np.nan_to_num(left, nan=np.inf)) > 1.5


def test_a_frame_of_another_size_is_refused():
    lens = Lens(K, np.array([0.1, 0.0, 0.0, 0.0]), SIZE)
    with pytest.raises(ValueError, match="a 160x120 frame for a lens calibrated at 320x240"):
        lens.undistort(Image.new("RGB", (160, 120)))
