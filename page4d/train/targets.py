"""Ground truth in the model's frame: world = camera (t0, v0), scale normalised as VGGT trains.

The model predicts cameras and points in the frame of its first camera and at an arbitrary but consistent
scale, so a clip's ground truth is moved to that frame and divided by the mean distance of its valid points
from the first camera before any loss compares them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from page4d.geometry.pose_encoding import extri_intri_to_pose_encoding
from page4d.geometry.unprojection import closed_form_inverse_se3, unproject_depth


@dataclass
class Targets:
    """Normalised ground truth for a batch, ``[B, T, V, ...]``."""

    pose_enc: torch.Tensor
    """``[B, T, V, 9]``."""
    depth: torch.Tensor
    """``[B, T, V, H, W]``, 0 where invalid."""
    world_points: torch.Tensor
    """``[B, T, V, H, W, 3]`` in the frame of camera (t0, v0)."""
    valid: torch.Tensor
    """``[B, T, V, H, W]`` bool, pixels with depth."""
    dynamic_mask: torch.Tensor | None
    """``[B, T, V, H, W]`` float, 1 = moving."""
    scale: torch.Tensor
    """``[B]`` the divisor applied to the metric ground truth."""


def make_targets(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, depth: torch.Tensor, dynamic_mask: torch.Tensor | None = None
) -> Targets:
    """Targets from world-to-camera ``extrinsics [B, T, V, 3, 4]``, ``intrinsics [B, T, V, 3, 3]`` and z-depth
    ``depth [B, T, V, H, W]`` (0 = invalid) at the model's input resolution."""
    b, t, v, height, width = depth.shape
    ext = extrinsics.double()
    first = torch.cat([ext[:, 0, 0], ext.new_tensor([0, 0, 0, 1]).expand(b, 1, 4)], dim=1)  # [B, 4, 4]
    # Extrinsics relative to camera (t0, v0): E' = E · E₀⁻¹.
    moved = ext @ closed_form_inverse_se3(first)[:, None, None]
    valid = depth > 0
    points = unproject_depth(depth.double().flatten(0, 2), moved.flatten(0, 2), intrinsics.double().flatten(0, 2))
    points = points.double().unflatten(0, (b, t, v))
    distance = (points.norm(dim=-1) * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
    scale = torch.where(distance > 0, distance, torch.ones_like(distance))
    moved = torch.cat([moved[..., :3], moved[..., 3:] / scale[:, None, None, None, None]], dim=-1)
    return Targets(
        pose_enc=extri_intri_to_pose_encoding(moved, intrinsics.double(), (height, width)),
        depth=(depth.double() / scale[:, None, None, None, None]).float(),
        world_points=(points / scale[:, None, None, None, None, None]).float() * valid[..., None],
        valid=valid, dynamic_mask=None if dynamic_mask is None else dynamic_mask.float(), scale=scale.float(),
    )
