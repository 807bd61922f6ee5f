"""``Predictions``: every model output, named, with shapes ``[B, T, V, ...]``."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Predictions:
    """Model outputs for every (t, v). Fields of heads that were not built (or not queried) are None.

    Cameras follow OpenCV axes; the world frame is camera (t=0, v=0).
    """

    pose_enc: torch.Tensor | None = None
    """``[B, T, V, 9]`` absT_quaR_FoV: t (3), quaternion xyzw (4), fov_h, fov_w (last camera iteration)."""
    pose_enc_list: list[torch.Tensor] | None = None
    """One ``[B, T, V, 9]`` per camera-head iteration (the last equals ``pose_enc``)."""
    extrinsic: torch.Tensor | None = None
    """``[B, T, V, 3, 4]`` world-to-camera ``[R | t]``."""
    intrinsic: torch.Tensor | None = None
    """``[B, T, V, 3, 3]`` pixel K for the model's input resolution (principal point at the centre)."""
    depth: torch.Tensor | None = None
    """``[B, T, V, H, W, 1]`` z-depth."""
    depth_conf: torch.Tensor | None = None
    """``[B, T, V, H, W]`` depth confidence (> 1)."""
    world_points: torch.Tensor | None = None
    """``[B, T, V, H, W, 3]`` points in the world frame from the point head."""
    world_points_conf: torch.Tensor | None = None
    """``[B, T, V, H, W]`` point confidence (> 1)."""
    dynamic_mask: torch.Tensor | None = None
    """``[B, T, V, H, W]`` probability that a pixel is moving (1 = moving), from the dynamic-mask head
    (bilinearly upsampled from the patch grid); None for models without one."""
    track: torch.Tensor | None = None
    """``[B, T, V, N, 2]`` pixel (x, y) of each query point in every frame (last iteration)."""
    track_list: list[torch.Tensor] | None = None
    """One ``[B, T, V, N, 2]`` per tracker iteration."""
    track_vis: torch.Tensor | None = None
    """``[B, T, V, N]`` visibility probability of each track."""
    track_conf: torch.Tensor | None = None
    """``[B, T, V, N]`` confidence of each track."""

    def to(self, device: torch.device | str) -> Predictions:
        """A copy with every tensor moved to ``device``."""
        def move(value: object) -> object:
            if isinstance(value, torch.Tensor):
                return value.to(device)
            if isinstance(value, list):
                return [v.to(device) for v in value]
            return value

        return Predictions(**{f.name: move(getattr(self, f.name)) for f in fields(self)})
