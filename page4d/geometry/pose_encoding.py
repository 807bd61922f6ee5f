"""The ``absT_quaR_FoV`` pose encoding <-> (extrinsic, intrinsic), exactly as VGGT defines it.

``pose_enc[..., :3]`` = translation t of the world-to-camera extrinsic, ``[..., 3:7]`` = quaternion
of its rotation (xyzw), ``[..., 7]`` = fov_h (vertical, pairs with the image height H),
``[..., 8]`` = fov_w (horizontal, pairs with W). The principal point is exactly (W/2, H/2).
"""

from __future__ import annotations

import torch

from page4d.conventions import POSE_ENCODING_DIM
from page4d.geometry.rotations import mat_to_quat, quat_to_mat


def pose_encoding_to_extri_intri(
    pose_enc: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``pose_enc [..., 9]`` for images of size ``(H, W)``.

    Returns ``extrinsic [..., 3, 4]`` (world-to-camera ``[R | t]``, OpenCV axes) and
    ``intrinsic [..., 3, 3]`` with fx = (W/2)/tan(fov_w/2), fy = (H/2)/tan(fov_h/2), cx = W/2, cy = H/2.
    """
    if pose_enc.shape[-1] != POSE_ENCODING_DIM:
        raise ValueError(f"expected a pose encoding [..., {POSE_ENCODING_DIM}], got shape {tuple(pose_enc.shape)}")
    height, width = image_size
    trans, quat, fov_h, fov_w = pose_enc[..., :3], pose_enc[..., 3:7], pose_enc[..., 7], pose_enc[..., 8]
    extrinsic = torch.cat([quat_to_mat(quat), trans[..., None]], dim=-1)

    fy = (height / 2.0) / torch.tan(fov_h / 2.0)
    fx = (width / 2.0) / torch.tan(fov_w / 2.0)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    rows = (fx, zero, zero + width / 2, zero, fy, zero + height / 2, zero, zero, one)
    intrinsic = torch.stack(rows, dim=-1).reshape(fx.shape + (3, 3))
    return extrinsic, intrinsic


def extri_intri_to_pose_encoding(
    extrinsic: torch.Tensor, intrinsic: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Encode ``extrinsic [..., 3, 4]`` (world-to-camera) and ``intrinsic [..., 3, 3]`` as ``[..., 9]`` float32.

    The quaternion comes out unit-length with w >= 0; the principal point of ``intrinsic`` is not encoded.
    """
    height, width = image_size
    quat = mat_to_quat(extrinsic[..., :3, :3])
    fov_h = 2 * torch.atan((height / 2) / intrinsic[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsic[..., 0, 0])
    return torch.cat([extrinsic[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1).float()
