"""Depth maps -> camera / world points, projection, and the closed-form SE(3) inverse.

Pixel convention (VGGT's): pixel (u, v) = (column, row) at integer coordinates is the pixel centre
(no +0.5), and ``u = fx·x/z + cx``, ``v = fy·y/z + cy``.
"""

from __future__ import annotations

import numpy as np
import torch


def closed_form_inverse_se3(transform: torch.Tensor) -> torch.Tensor:
    """Invert rigid transforms ``[..., 3, 4]`` or ``[..., 4, 4]`` ``[R | t]`` as ``[Rᵀ | -Rᵀt]``, same shape.

    Turns world-to-camera extrinsics into camera-to-world ones and back.
    """
    if transform.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"expected [..., 3, 4] or [..., 4, 4] transforms, got shape {tuple(transform.shape)}")
    rot_t = transform[..., :3, :3].transpose(-1, -2)
    trans = -(rot_t @ transform[..., :3, 3:])
    inverse = torch.cat([rot_t, trans], dim=-1)
    if transform.shape[-2] == 4:
        inverse = torch.cat([inverse, transform[..., 3:, :]], dim=-2)
    return inverse


def camera_to_world(extrinsic: np.ndarray) -> np.ndarray:
    """``[..., 4, 4]`` float64 camera-to-world poses of world-to-camera ``extrinsic [..., 3, 4]`` (numpy), through
    :func:`closed_form_inverse_se3`: for the exports and the viewer, which hold numpy arrays."""
    pose = np.broadcast_to(np.eye(4), (*extrinsic.shape[:-2], 4, 4)).copy()
    pose[..., :3, :] = closed_form_inverse_se3(torch.from_numpy(np.asarray(extrinsic, np.float64))).numpy()
    return pose


def pixels_to_camera(uv: torch.Tensor, depth: torch.Tensor, intrinsic: torch.Tensor) -> torch.Tensor:
    """Camera-frame points ``[..., N, 3]`` (float64) of pixels ``uv [..., N, 2]`` (column, row) at z-depths
    ``depth [..., N]``, with ``intrinsic [..., 3, 3]`` (no skew): ``x = (u - cx)·z / fx``, ``y = (v - cy)·z / fy``.

    The library's one unprojection formula: dense maps, sparse pixels and frustum corners all go through it.
    """
    k = intrinsic.double()[..., None, :, :]
    z = depth.double()
    x = (uv[..., 0].double() - k[..., 0, 2]) * z / k[..., 0, 0]
    y = (uv[..., 1].double() - k[..., 1, 2]) * z / k[..., 1, 1]
    return torch.stack([x, y, z], dim=-1)


def depth_to_camera_points(depth: torch.Tensor, intrinsic: torch.Tensor) -> torch.Tensor:
    """Camera-frame points ``[..., H, W, 3]`` from z-depth ``[..., H, W]`` and ``intrinsic [..., 3, 3]`` (no skew).

    Computed in float64 and returned as float32 (the reference's rounding).
    """
    height, width = depth.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=depth.device),
                                torch.arange(width, dtype=torch.float64, device=depth.device), indexing="ij")
    uv = torch.stack([cols, rows], dim=-1).reshape(-1, 2)
    points = pixels_to_camera(uv, depth.flatten(-2), intrinsic)
    return points.unflatten(-2, (height, width)).float()


def unproject_depth(depth: torch.Tensor, extrinsic: torch.Tensor, intrinsic: torch.Tensor) -> torch.Tensor:
    """World points ``[..., H, W, 3]`` (float32) from z-depth ``[..., H, W]`` or ``[..., H, W, 1]``.

    The leading dims ``...`` of depth, ``extrinsic`` and ``intrinsic`` are the same.
    ``extrinsic [..., 3, 4]`` is world-to-camera, ``intrinsic [..., 3, 3]``. Matches VGGT's
    ``unproject_depth_map_to_point_map``: camera points rounded to float32, then
    ``X_world = Rᵀ·X_cam - Rᵀ·t`` in float64 with ``-Rᵀ·t`` formed in the extrinsic's dtype.
    Pixels with depth 0 map to the camera centre; mask them yourself (e.g. ``depth > 1e-8``).
    """
    if depth.dim() == extrinsic.dim() + 1:
        depth = depth[..., 0]
    cam_points = depth_to_camera_points(depth, intrinsic)
    cam_to_world = closed_form_inverse_se3(extrinsic).double()
    rot = cam_to_world[..., None, None, :3, :3]
    trans = cam_to_world[..., None, None, :3, 3]
    world = (rot @ cam_points.double()[..., None])[..., 0] + trans
    return world.float()


def project_points(
    points: torch.Tensor, extrinsic: torch.Tensor, intrinsic: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points ``[..., N, 3]`` with ``extrinsic [..., 3, 4]`` (world-to-camera), ``intrinsic [..., 3, 3]``.

    Returns pixels ``[..., N, 2]`` as (u, v) = (column, row) and z-depths ``[..., N]``.
    """
    cam = points @ extrinsic[..., :3, :3].transpose(-1, -2) + extrinsic[..., None, :3, 3]
    pix = cam @ intrinsic.transpose(-1, -2)
    depth = cam[..., 2]
    return pix[..., :2] / pix[..., 2:3], depth
