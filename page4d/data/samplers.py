"""Training samples from clips: which time window and which views, drawn reproducibly, plus photometric jitter
a geometric zoom and a quarter turn (portrait frames), both keeping the cameras consistent.

Every draw takes a ``numpy.random.Generator`` seeded from (run seed, step, sample), so a resumed or
data-parallel run sees the same samples as an uninterrupted single-process one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from page4d.data.clip import MultiViewClip


@dataclass(frozen=True)
class WindowSampler:
    """``num_times`` consecutive time steps and ``num_views`` distinct views, in random view order."""

    num_times: int
    num_views: int
    permute_views: bool = True

    def draw(self, rng: np.random.Generator, clip_times: int, clip_views: int) -> tuple[list[int], list[int]]:
        """(time positions, view positions) within a clip of ``clip_times`` × ``clip_views``."""
        if clip_times < self.num_times or clip_views < self.num_views:
            raise ValueError(f"a {self.num_times} × {self.num_views} sample needs a clip at least that large, got "
                             f"{clip_times} × {clip_views}; lower scene.num_times / scene.num_views")
        start = int(rng.integers(0, clip_times - self.num_times + 1))
        views = rng.choice(clip_views, self.num_views, replace=False)
        views = views if self.permute_views else np.sort(views)
        return list(range(start, start + self.num_times)), [int(v) for v in views]


def colour_jitter(images: torch.Tensor, rng: np.random.Generator, strength: float) -> torch.Tensor:
    """Per-sample brightness, contrast and saturation in ``1 ± strength`` on ``[..., 3, H, W]`` in [0, 1]; the
    geometry (and so K) is untouched."""
    if strength <= 0:
        return images
    brightness, contrast, saturation = (1 + strength * rng.uniform(-1, 1, 3)).tolist()
    grey = images.mean(dim=-3, keepdim=True)
    out = grey + saturation * (images - grey)
    out = out.mean(dim=(-3, -2, -1), keepdim=True) + contrast * (out - out.mean(dim=(-3, -2, -1), keepdim=True))
    return (brightness * out).clamp(0, 1)


def zoom(sample: dict[str, torch.Tensor], rng: np.random.Generator, max_zoom: float) -> dict[str, torch.Tensor]:
    """Random zoom-in by ``s`` in ``[1, max_zoom]`` on a random window, resampled back to the same size, with K
    mapped to match (``K' = A·K``); z-depth is unchanged by it, so depth and masks are only resampled (nearest).

    With integer pixel = pixel centre, a window of ``W/s × H/s`` at offset ``(x0, y0)`` stretched back to
    ``W × H`` sends ``u`` to ``s·(u − x0 + ½) − ½``: ``A = [[s, 0, s(½ − x0) − ½], [0, s, s(½ − y0) − ½], [0, 0, 1]]``.
    One zoom per sample (all its frames), so the rig's geometry stays consistent across views and time.
    """
    if max_zoom <= 1:
        return sample
    images = sample["images"]
    height, width = images.shape[-2:]
    scale = float(rng.uniform(1, max_zoom))
    x0, y0 = float(rng.uniform(0, width - width / scale)), float(rng.uniform(0, height - height / scale))
    # Source pixel of every output pixel, in grid_sample's normalised coordinates (align_corners=False).
    u = (torch.arange(width, dtype=torch.float64) + 0.5) / scale - 0.5 + x0
    v = (torch.arange(height, dtype=torch.float64) + 0.5) / scale - 0.5 + y0
    grid = torch.stack(torch.meshgrid((2 * v + 1) / height - 1, (2 * u + 1) / width - 1, indexing="ij")[::-1], -1)
    grid = grid.float()[None].expand(images[..., 0, :, :].numel() // (height * width), -1, -1, -1)

    def resample(x: torch.Tensor, mode: str) -> torch.Tensor:
        flat = x.reshape(-1, *x.shape[-3:]).float()
        out = F.grid_sample(flat, grid, mode=mode, padding_mode="border", align_corners=False)
        return out.reshape(x.shape).to(x.dtype)

    matrix = torch.tensor([[scale, 0, scale * (0.5 - x0) - 0.5], [0, scale, scale * (0.5 - y0) - 0.5], [0, 0, 1]])
    return {
        "images": resample(images, "bilinear"),
        "depth": resample(sample["depth"][..., None, :, :], "nearest")[..., 0, :, :],
        "dynamic_mask": resample(sample["dynamic_mask"][..., None, :, :], "nearest")[..., 0, :, :],
        "intrinsics": (matrix.double() @ sample["intrinsics"].double()).to(sample["intrinsics"].dtype),
        "extrinsics": sample["extrinsics"],
    }


def quarter_turn(sample: dict[str, torch.Tensor], clockwise: bool) -> dict[str, torch.Tensor]:
    """Every frame of ``sample`` turned by 90° (landscape becomes portrait), each camera rolled about its optical
    axis to match, so depth, masks and the world stay the same and only the frame's shape changes.

    With integer pixel = pixel centre, turning an ``H × W`` frame clockwise sends pixel ``(u, v)`` to
    ``(H − 1 − v, u)`` (``A``) and camera coordinates ``(x, y, z)`` to ``(−y, x, z)`` (``R``); so
    ``K' = A·K·Rᵀ`` and ``[R_w | t]' = R·[R_w | t]``. Counter-clockwise is the inverse turn.
    """
    height, width = sample["images"].shape[-2:]
    if clockwise:
        pixels = torch.tensor([[0, -1, height - 1], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
        roll = torch.tensor([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    else:
        pixels = torch.tensor([[0, 1, 0], [-1, 0, width - 1], [0, 0, 1]], dtype=torch.float64)
        roll = torch.tensor([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    k = -1 if clockwise else 1
    turned = {name: torch.rot90(sample[name], k, dims=(-2, -1)).contiguous()
              for name in ("images", "depth", "dynamic_mask")}
    intrinsics, extrinsics = sample["intrinsics"], sample["extrinsics"]
    turned["intrinsics"] = (pixels @ intrinsics.double() @ roll.T).to(intrinsics.dtype)
    turned["extrinsics"] = (roll @ extrinsics.double()).to(extrinsics.dtype)
    return turned


class ClipSamples:
    """Samples from one clip with ground truth (``depths/`` and ``cameras.json``; ``masks/`` optional), at the
    model-input size of ``width`` (crop mode); the images are pre-processed once and kept in memory."""

    def __init__(self, clip: MultiViewClip, width: int):
        if clip.intrinsics is None or clip.depth_paths is None:
            raise ValueError(f"{clip.root}: training on a clip needs its depths/ and cameras.json")
        self.images, transforms = clip.load_images(mode="crop", target_size=width)
        self.depth = clip.load_depths(transforms)
        self.mask = clip.load_masks(transforms) if clip.mask_paths is not None else None
        self.intrinsics, self.extrinsics = clip.model_intrinsics(transforms), clip.extrinsics
        self.size = tuple(self.images.shape[-2:])

    @property
    def shape(self) -> tuple[int, int]:
        return self.images.shape[0], self.images.shape[1]

    def sample(self, times: list[int], views: list[int]) -> dict[str, torch.Tensor]:
        """``images [T, V, 3, H, W]``, ``depth``, ``dynamic_mask`` (all False without masks), ``intrinsics``,
        ``extrinsics`` of the given positions."""
        index = (torch.tensor(times)[:, None], torch.tensor(views)[None, :])
        mask = torch.zeros_like(self.depth, dtype=torch.bool) if self.mask is None else self.mask
        return {"images": self.images[index], "depth": self.depth[index], "dynamic_mask": mask[index],
                "intrinsics": self.intrinsics[index], "extrinsics": self.extrinsics[index]}
