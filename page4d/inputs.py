"""``ForwardInputs``: the optional inputs of one forward pass besides the images, as one bundle.

Pixel maps arrive at the images' resolution and are averaged over each patch once, by ``at_patches``,
before they reach the aggregator; every consumer below reads the patch-level bundle.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

CameraPriors = tuple[torch.Tensor, torch.Tensor]
"""Coarse (intrinsics ``[B, T, V, 3, 3]``, world-to-camera extrinsics ``[B, T, V, 3, 4]``) at the input resolution."""


@dataclass
class ForwardInputs:
    """What a forward pass may take besides the images. Every field is optional; each map or prior feeds one
    mechanism, and a model without that mechanism refuses it (a silently ignored input would mislead). The mask
    step is the exception: the training loop passes it to every model, and only PAGE-4D's schedule reads it."""

    mask_step: float = 0.0
    """Training step for PAGE-4D's mask-strength schedule (0 at inference)."""
    external_mask: torch.Tensor | None = None
    """Moving mask in [0, 1] (1 = moving, e.g. from SegAnyMo) shaped like the images without channels,
    ``[B, T, V, H, W]`` (or ``[B, S, H, W]`` for 5-D images); fused by the ``fusion`` mask head."""
    camera_priors: CameraPriors | None = None
    """Coarse cameras at the input resolution (``[B, S, ...]`` for 5-D images), for the epipolar prior."""
    keypoints: torch.Tensor | None = None
    """Keypoint density in [0, 1] shaped like ``external_mask``, for the sparse global blocks (landmark
    anchors, keypoint bias)."""
    pooled: bool = field(default=False, repr=False)
    """Set by ``at_patches``: the maps are ``[B, T, V, h, w]`` patch means and the priors ``[B, T, V, ...]``."""

    def __post_init__(self) -> None:
        if isinstance(self.mask_step, bool) or not isinstance(self.mask_step, numbers.Real):
            raise TypeError(f"mask_step must be a number (the training step), got {type(self.mask_step).__name__}")
        for name in ("external_mask", "keypoints"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor [B, T, V, H, W], got {type(value).__name__}")
        priors = self.camera_priors
        if priors is not None and not (
            isinstance(priors, tuple) and len(priors) == 2 and all(isinstance(x, torch.Tensor) for x in priors)
        ):
            raise TypeError("camera_priors must be a tuple (intrinsics [B, T, V, 3, 3], world-to-camera extrinsics "
                            f"[B, T, V, 3, 4]) of torch.Tensors, got {type(priors).__name__}")

    def to(self, device: torch.device) -> ForwardInputs:
        """The same inputs with every tensor on ``device``."""
        priors = None if self.camera_priors is None else tuple(x.to(device) for x in self.camera_priors)
        return dataclasses.replace(
            self, external_mask=_moved(self.external_mask, device), keypoints=_moved(self.keypoints, device),
            camera_priors=priors,
        )

    def at_patches(self, image_shape: torch.Size, patch_size: int) -> ForwardInputs:
        """For images ``[B, T, V, 3, H, W]``: pixel maps -> patch means ``[B, T, V, h, w]``, 5-D-style inputs
        (``[B, S, ...]`` with T = 1) -> ``[B, 1, S, ...]``. ``ValueError`` naming the input when a shape is wrong."""
        if self.pooled:
            return self
        t = image_shape[1]
        priors = self.camera_priors
        if priors is not None and priors[0].dim() == 4 and t == 1:
            priors = (priors[0].unsqueeze(1), priors[1].unsqueeze(1))
        return dataclasses.replace(
            self, camera_priors=priors, pooled=True,
            external_mask=_pooled(self.external_mask, image_shape, patch_size, "external_mask"),
            keypoints=_pooled(self.keypoints, image_shape, patch_size, "keypoints"),
        )


def _moved(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if x is None else x.to(device)


def _pooled(pixels: torch.Tensor | None, image_shape: torch.Size, patch_size: int, name: str) -> torch.Tensor | None:
    """Pixel map ``[B, T, V, H, W]`` (or ``[B, S, H, W]`` when T = 1) -> patch means ``[B, T, V, h, w]``."""
    if pixels is None:
        return None
    b, t, v, _, height, width = image_shape
    if pixels.dim() == 4 and t == 1:
        pixels = pixels.unsqueeze(1)
    if tuple(pixels.shape) != (b, t, v, height, width):
        raise ValueError(
            f"{name} must be [B, T, V, H, W] = {[b, t, v, height, width]} like the images "
            f"(or [B, S, H, W] for 5-D images), got {list(pixels.shape)}"
        )
    pooled = F.avg_pool2d(pixels.float().flatten(0, 2)[:, None], kernel_size=patch_size)
    return pooled[:, 0].unflatten(0, (b, t, v))
