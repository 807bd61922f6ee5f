"""The optional forward inputs a training batch may carry, made from its ground truth, so the mechanisms that
read them (the fusion head's β and gate, the epipolar prior, the keypoint bias λ_kpt) train at all.

* External masks: the ground-truth moving mask of each frame, dilated or eroded by a random radius and, with
  ``mask_drop``, missing altogether (all static), as a segmenter's mask would be: good but not exact.
* Camera priors: each camera's ground truth (K and pose at the sample's resolution) perturbed once per view,
  as a calibration a little off would be (the same prior at every step).
* Keypoints: a corner-strength map of each frame (the smaller eigenvalue of the structure tensor, Shi–Tomasi),
  scaled to [0, 1] per frame.

Each is drawn for a whole batch with probability ``InputsConfig.<name>`` (a model sees batches with and without
it, as at inference), by a generator seeded with (seed, step), so every data-parallel rank agrees; a sample's own
corruption is drawn from that sample's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from page4d.geometry import closed_form_inverse_se3
from page4d.inputs import ForwardInputs

PRESENCE_STREAM = 2**31
"""The last seed word of the per-batch presence draw (sample generators use their index, far below it)."""


@dataclass
class InputsConfig:
    """How often a batch carries each optional input, and how far each is from the truth."""

    external_mask: float = 0.0
    """Probability that a batch carries external moving masks (fusion mask head)."""
    mask_radius_px: int = 3
    """Each frame's mask is dilated (r > 0) or eroded (r < 0) by r drawn from ``-R .. R`` pixels."""
    mask_drop: float = 0.1
    """Probability that a frame's external mask misses every moving object (all static)."""
    camera_priors: float = 0.0
    """Probability that a batch carries coarse cameras (epipolar prior)."""
    prior_rotation_deg: float = 3.0
    """Standard deviation of each camera's rotation error (per axis of a rotation vector)."""
    prior_translation: float = 0.05
    """Standard deviation of each camera centre's error per axis, as a fraction of the rig's extent."""
    prior_focal: float = 0.05
    """Standard deviation of the relative focal-length error."""
    keypoints: float = 0.0
    """Probability that a batch carries keypoint maps (sparse global blocks)."""

    def validate(self) -> None:
        for name in ("external_mask", "mask_drop", "camera_priors", "keypoints"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"config.inputs.{name}: got {value!r}; use a probability in [0, 1]")
        for name in ("mask_radius_px", "prior_rotation_deg", "prior_translation", "prior_focal"):
            if getattr(self, name) < 0:
                raise ValueError(f"config.inputs.{name}: got {getattr(self, name)!r}; use a number >= 0")

    def check_model(self, config) -> None:
        """``ValueError`` when an input is asked for that ``config`` (a ``ModelConfig``) has nothing to read it."""
        readers = {"external_mask": "fusion dynamic-mask head (or fused PAGE-4D head)",
                   "camera_priors": "epipolar prior in any view block", "keypoints": "sparse global blocks"}
        for name, what in readers.items():
            if getattr(self, name) > 0 and not config.aggregator.reads(name):
                raise ValueError(f"config.inputs.{name} is {getattr(self, name)}, but the model has no {what} to "
                                 f"read it; set inputs.{name}: 0 or train a model that has one")

    def present(self, seed: int, step: int) -> set[str]:
        """The inputs the batch of ``step`` carries."""
        rng = np.random.default_rng([seed, step, PRESENCE_STREAM])
        draws = rng.random(3)
        chances = (self.external_mask, self.camera_priors, self.keypoints)
        return {name for name, draw, chance in zip(("external_mask", "camera_priors", "keypoints"), draws, chances,
                                                    strict=True) if draw < chance}


def corrupted_mask(mask: torch.Tensor, rng: np.random.Generator, cfg: InputsConfig) -> torch.Tensor:
    """``[T, V, H, W]`` bool ground truth -> float external masks: per frame dilated or eroded by a random
    radius, or (``mask_drop``) empty."""
    frames = mask.float().flatten(0, 1)[:, None]  # [T·V, 1, H, W]
    out = []
    for frame in frames:
        radius = int(rng.integers(-cfg.mask_radius_px, cfg.mask_radius_px + 1)) if cfg.mask_radius_px else 0
        if rng.random() < cfg.mask_drop:
            out.append(torch.zeros_like(frame))
            continue
        size = 2 * abs(radius) + 1
        if radius > 0:
            frame = F.max_pool2d(frame[None], size, stride=1, padding=radius)[0]
        elif radius < 0:
            frame = 1 - F.max_pool2d(1 - frame[None], size, stride=1, padding=-radius)[0]
        out.append(frame)
    return torch.stack(out)[:, 0].unflatten(0, mask.shape[:2])


def noisy_priors(intrinsics: torch.Tensor, extrinsics: torch.Tensor, rng: np.random.Generator,
                 cfg: InputsConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth ``[T, V, 3, 3]`` / ``[T, V, 3, 4]`` -> coarse cameras: one error per view (rotation vector,
    centre offset, focal scale), the same at every step."""
    views = extrinsics.shape[1]
    dtype = extrinsics.dtype
    rotvec = torch.from_numpy(rng.normal(0.0, np.radians(cfg.prior_rotation_deg), (views, 3))).to(dtype)
    skew = torch.cross(torch.eye(3, dtype=dtype)[None], rotvec[:, None, :], dim=-1)  # row i: e_i × ω = [ω]ₓ
    turn = torch.linalg.matrix_exp(skew)  # [V, 3, 3] rotation by |ω| about ω
    c2w = closed_form_inverse_se3(extrinsics)
    centres = c2w[..., :3, 3]
    extent = (centres[0] - centres[0].mean(0)).norm(dim=-1).median().clamp(min=1e-6)
    offset = torch.from_numpy(rng.normal(0.0, cfg.prior_translation, (views, 3))).to(dtype) * extent
    scale = torch.from_numpy(1.0 + rng.normal(0.0, cfg.prior_focal, views)).to(intrinsics.dtype).clamp(min=0.2)
    rotation = turn[None] @ extrinsics[..., :3]
    moved = centres + offset[None]
    translation = -(rotation @ moved[..., None])[..., 0]
    k = intrinsics.clone()
    k[..., 0, 0] *= scale[None]
    k[..., 1, 1] *= scale[None]
    return k, torch.cat([rotation, translation[..., None]], dim=-1)


def keypoint_map(images: torch.Tensor, window: int = 5) -> torch.Tensor:
    """``[T, V, 3, H, W]`` in [0, 1] -> ``[T, V, H, W]`` corner strength in [0, 1] (the structure tensor's smaller
    eigenvalue over a ``window``-pixel box, divided by the frame's largest)."""
    grey = images.mean(dim=2).flatten(0, 1)[:, None].float()  # [N, 1, H, W]
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    gx = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), sobel[None, None])
    gy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), sobel.T[None, None])
    box = _box(window)
    xx, yy, xy = (box(a) for a in (gx * gx, gy * gy, gx * gy))
    trace, det = xx + yy, xx * yy - xy * xy
    smaller = trace / 2 - ((trace / 2) ** 2 - det).clamp(min=0).sqrt()
    peak = smaller.flatten(1).max(dim=1).values.clamp(min=1e-12)[:, None, None, None]
    return (smaller.clamp(min=0) / peak)[:, 0].unflatten(0, images.shape[:2])


def _box(window: int):
    """A mean over ``window × window`` pixels (edge-replicated), as a function of ``[N, 1, H, W]`` maps."""
    half = window // 2

    def box(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (half, half, half, half), mode="replicate"), window, stride=1)

    return box


def sample_inputs(sample: dict[str, torch.Tensor], rng: np.random.Generator, cfg: InputsConfig,
                  present: set[str]) -> dict[str, torch.Tensor]:
    """The ``present`` inputs of one sample (``images``, ``dynamic_mask``, ``intrinsics``, ``extrinsics``), as the
    batch entries ``external_mask``, ``prior_intrinsics`` / ``prior_extrinsics`` and ``keypoints``."""
    out = {}
    if "external_mask" in present:
        out["external_mask"] = corrupted_mask(sample["dynamic_mask"], rng, cfg)
    if "camera_priors" in present:
        out["prior_intrinsics"], out["prior_extrinsics"] = noisy_priors(sample["intrinsics"], sample["extrinsics"],
                                                                        rng, cfg)
    if "keypoints" in present:
        out["keypoints"] = keypoint_map(sample["images"])
    return out


def forward_inputs(batch: dict[str, torch.Tensor], step: int) -> ForwardInputs:
    """The ``ForwardInputs`` of a stacked batch: the mask step and whichever inputs it carries."""
    priors = None
    if "prior_intrinsics" in batch:
        priors = (batch["prior_intrinsics"], batch["prior_extrinsics"])
    return ForwardInputs(mask_step=float(step), external_mask=batch.get("external_mask"), camera_priors=priors,
                         keypoints=batch.get("keypoints"))
