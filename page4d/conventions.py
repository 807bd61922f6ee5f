"""Conventions shared by every module: axis letters, token layout, camera and image conventions.

Axis letters used in shape docstrings:
    B batch, T time steps, V views (cameras), S = T·V frames, P tokens per frame,
    C channels, H/W pixels, h/w = H/14, W/14 patches, N query points.

Images are RGB in [0, 1], ``[B, T, V, 3, H, W]`` with H and W multiples of ``PATCH_SIZE``;
ImageNet normalisation happens inside the model. A 5-D input ``[B, S, 3, H, W]`` means T = 1, V = S
(a set of views at one instant: exactly VGGT semantics).

Cameras use OpenCV axes (x right, y down, z forward). ``extrinsic`` is world-to-camera ``[R | t]``
(3×4), ``intrinsic`` the pixel matrix K (3×3). The world frame is camera (t=0, v=0). The pose
encoding ``absT_quaR_FoV`` is t(3), quaternion xyzw (4, scalar last), fov_h, fov_w. Depth is z-depth.

``dynamic_mask`` polarity: 1 = moving.
"""

from __future__ import annotations

PATCH_SIZE = 14
"""Pixels per patch side (DINOv2 /14)."""

NUM_CAMERA_TOKENS = 1
"""Camera tokens per frame (slot 0 of the token layout)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

COLMAP_PIXEL_OFFSET = 0.5
"""COLMAP's pixel coordinate of the centre of pixel (0, 0) (page4d's, VGGT's and OpenCV's is 0)."""


def colmap_pinhole_params(k) -> list[float]:
    """COLMAP PINHOLE parameters ``[fx, fy, cx, cy]`` of page4d's K ``[3, 3]`` (the principal point shifted by
    :data:`COLMAP_PIXEL_OFFSET`)."""
    return [float(k[0][0]), float(k[1][1]), float(k[0][2]) + COLMAP_PIXEL_OFFSET, float(k[1][2]) + COLMAP_PIXEL_OFFSET]

POSE_ENCODING_DIM = 9
"""Channels of VGGT's ``absT_quaR_FoV`` pose encoding: t (3) + quaternion xyzw (4) + fov_h + fov_w."""


def patch_start_index(num_register_tokens: int) -> int:
    """Index of the first patch token in a frame: ``[camera, registers..., patches...]``."""
    return NUM_CAMERA_TOKENS + num_register_tokens
