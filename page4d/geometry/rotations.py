"""Quaternion <-> rotation matrix conversions (quaternions are xyzw, scalar last, as in VGGT)."""

from __future__ import annotations

import torch


def quat_to_mat(quat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from quaternions ``[..., 4]`` (x, y, z, w) -> ``[..., 3, 3]``.

    The quaternion need not be unit length: the products are scaled by ``2 / |q|²``, which is the
    rotation of the normalised quaternion.
    """
    x, y, z, w = quat.unbind(-1)
    two_s = 2.0 / (quat * quat).sum(-1)
    rows = (
        1 - two_s * (y * y + z * z),
        two_s * (x * y - z * w),
        two_s * (x * z + y * w),
        two_s * (x * y + z * w),
        1 - two_s * (x * x + z * z),
        two_s * (y * z - x * w),
        two_s * (x * z - y * w),
        two_s * (y * z + x * w),
        1 - two_s * (x * x + y * y),
    )
    return torch.stack(rows, -1).reshape(quat.shape[:-1] + (3, 3))


def _sqrt_positive_part(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` with a zero (not NaN) gradient where ``x <= 0``."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def mat_to_quat(rot: torch.Tensor) -> torch.Tensor:
    """Quaternions ``[..., 4]`` (x, y, z, w) from rotation matrices ``[..., 3, 3]``, standardised to w >= 0.

    Each of w, x, y, z gives a formula for the whole quaternion divided by that component; the one
    with the largest component (best conditioned) is used, as in PyTorch3D / VGGT.
    """
    if rot.shape[-2:] != (3, 3):
        raise ValueError(f"expected rotation matrices [..., 3, 3], got shape {tuple(rot.shape)}")
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = rot.reshape(rot.shape[:-2] + (9,)).unbind(-1)
    # |w|, |x|, |y|, |z| (times 2), from the diagonal.
    q_abs = _sqrt_positive_part(
        torch.stack(
            (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22),
            dim=-1,
        )
    )
    # Row k: the quaternion (w, x, y, z) multiplied by 4 * component k.
    candidates = torch.stack(
        (
            torch.stack((q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21), dim=-1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2), dim=-1),
        ),
        dim=-2,
    )
    # The floor only guards the division; a small component is never the one selected.
    candidates = candidates / (2.0 * q_abs[..., None].clamp_min(0.1))
    best = q_abs.argmax(dim=-1)
    wxyz = torch.gather(candidates, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    xyzw = wxyz[..., [1, 2, 3, 0]]
    return standardize_quaternion(xyzw)


def standardize_quaternion(quat: torch.Tensor) -> torch.Tensor:
    """Flip quaternions ``[..., 4]`` (xyzw) so that the scalar part w is non-negative."""
    return torch.where(quat[..., 3:4] < 0, -quat, quat)
