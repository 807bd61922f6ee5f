"""VGGT's image pre-processing (``load_and_preprocess_images``, modes ``crop`` and ``pad``), with its geometry.

Both modes reproduce the reference bit-for-bit: RGBA is composited on white, the 8-bit RGB image is
resized with PIL BICUBIC, the rounded side uses Python's ``round`` (halves to even), crop mode centre-crops
rows beyond the target, pad mode and mixed sizes in one batch pad with white, ``floor(pad / 2)`` before.
Each image also gets an :class:`ImageTransform` that maps pixels and intrinsics between the original
image and the model input.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch
from PIL import Image

from page4d.conventions import PATCH_SIZE
from page4d.data.rasters import WHITE, ImageSource, load_rgb

PreprocessMode = Literal["crop", "pad"]
ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


@dataclass(frozen=True)
class ImageTransform:
    """Where the pixels of one original image land in the model input.

    Pixel convention: integer (u, v) = (column, row) is the pixel centre, as in VGGT's unprojection.
    PIL's resize places pixel centres at ``(i + 0.5)·s - 0.5``, so with ``sx = W1/W0`` and ``sy = H1/H0``
    (resized over original size) an original pixel (u, v) maps to the model-input pixel

        u' = sx·u + (sx - 1)/2 + pad_left
        v' = sy·v + (sy - 1)/2 + pad_top - crop_top

    and an original intrinsic K to ``A @ K`` with ``A = [[sx, 0, (sx-1)/2 + pad_left],
    [0, sy, (sy-1)/2 + pad_top - crop_top], [0, 0, 1]]``.
    """

    original_size: tuple[int, int]
    """(H0, W0) of the original image."""
    resized_size: tuple[int, int]
    """(H1, W1) after the resize, before cropping or padding."""
    crop_top: int
    """Rows removed at the top of the resized image (crop mode, H1 > target)."""
    pad_top: int
    """White rows added above (pad mode and batch padding)."""
    pad_left: int
    """White columns added on the left."""
    output_size: tuple[int, int]
    """(H, W) of the model input."""

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx) = resized over original size; the two differ slightly because of the rounding to 14."""
        return self.resized_size[0] / self.original_size[0], self.resized_size[1] / self.original_size[1]

    def pixel_matrix(self) -> np.ndarray:
        """``A [3, 3]`` float64 with ``[u', v', 1] = A @ [u, v, 1]`` (original -> model-input pixels)."""
        sy, sx = self.scale
        return np.array(
            [
                [sx, 0.0, (sx - 1) / 2 + self.pad_left],
                [0.0, sy, (sy - 1) / 2 + self.pad_top - self.crop_top],
                [0.0, 0.0, 1.0],
            ]
        )

    def map_pixels(self, uv: ArrayT) -> ArrayT:
        """Original pixels ``[..., 2]`` (u, v) -> model-input pixels ``[..., 2]``."""
        return _apply_affine(self.pixel_matrix(), uv)

    def unmap_pixels(self, uv: ArrayT) -> ArrayT:
        """Model-input pixels ``[..., 2]`` (u, v) -> original pixels ``[..., 2]``."""
        return _apply_affine(np.linalg.inv(self.pixel_matrix()), uv)

    def adjust_intrinsics(self, intrinsic: ArrayT) -> ArrayT:
        """Original-image ``K [..., 3, 3]`` -> ``A @ K`` for the model input (same type and dtype)."""
        return _left_multiply(self.pixel_matrix(), intrinsic)

    def restore_intrinsics(self, intrinsic: ArrayT) -> ArrayT:
        """Model-input ``K [..., 3, 3]`` -> ``A⁻¹ @ K`` for the original image (same type and dtype)."""
        return _left_multiply(np.linalg.inv(self.pixel_matrix()), intrinsic)


@dataclass
class PreprocessedImages:
    """A batch ready for the model and the per-image geometry of how it was made."""

    images: torch.Tensor
    """``[N, 3, H, W]`` float32 RGB in [0, 1] (uint8 / 255)."""
    transforms: list[ImageTransform]
    """One per image, in input order."""


def _left_multiply(matrix: np.ndarray, intrinsic: ArrayT) -> ArrayT:
    if isinstance(intrinsic, torch.Tensor):
        mat = torch.as_tensor(matrix, device=intrinsic.device)
        return (mat @ intrinsic.double()).to(intrinsic.dtype)
    return (matrix @ intrinsic.astype(np.float64)).astype(intrinsic.dtype)


def _apply_affine(matrix: np.ndarray, uv: ArrayT) -> ArrayT:
    if isinstance(uv, torch.Tensor):
        mat = torch.as_tensor(matrix, device=uv.device)
        return (uv.double() @ mat[:2, :2].T + mat[:2, 2]).to(uv.dtype)
    return (uv.astype(np.float64) @ matrix[:2, :2].T + matrix[:2, 2]).astype(uv.dtype)


def _resized_size(height: int, width: int, mode: PreprocessMode, target: int) -> tuple[int, int]:
    """(H1, W1): the long side (pad) or the width (crop) becomes ``target``, the other a rounded multiple of 14."""
    if mode == "crop" or width >= height:
        return round(height * (target / width) / PATCH_SIZE) * PATCH_SIZE, target
    return target, round(width * (target / height) / PATCH_SIZE) * PATCH_SIZE


def plan_transforms(
    sizes: Sequence[tuple[int, int]], mode: PreprocessMode = "crop", target_size: int = 518,
    names: Sequence[str] | None = None,
) -> list[ImageTransform]:
    """The :class:`ImageTransform` of each original size (H0, W0) in one batch, from the sizes alone.

    ``crop``: width -> ``target_size``, height -> ``round(h·target/w / 14)·14``, rows beyond the target
    centre-cropped. ``pad``: the long side -> ``target_size``, the other rounded the same way, padded with
    white to a square. Results of different sizes (crop mode with mixed aspect ratios) are padded with white to
    the largest H and W, ``floor(pad / 2)`` before. ``names`` name the images in errors.
    """
    if not sizes:
        raise ValueError("no images given; pass at least one image path")
    if mode not in ("crop", "pad"):
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")
    if target_size <= 0 or target_size % PATCH_SIZE:
        raise ValueError(f"target_size must be a positive multiple of {PATCH_SIZE}, got {target_size}")
    partial = []
    for index, (height, width) in enumerate(sizes):
        new_h, new_w = _resized_size(height, width, mode, target_size)
        if new_h == 0 or new_w == 0:
            name = f"image {index}" if names is None else names[index]
            raise ValueError(
                f"{name}: aspect ratio {width}x{height} is too extreme to resize to a multiple of "
                f"{PATCH_SIZE} at target size {target_size}; crop the image or raise target_size"
            )
        crop_top = (new_h - target_size) // 2 if mode == "crop" and new_h > target_size else 0
        kept_h = min(new_h, target_size) if mode == "crop" else target_size
        kept_w = new_w if mode == "crop" else target_size
        pad_top, pad_left = ((target_size - new_h) // 2, (target_size - new_w) // 2) if mode == "pad" else (0, 0)
        partial.append(((height, width), (new_h, new_w), crop_top, pad_top, pad_left, (kept_h, kept_w)))
    out_h, out_w = max(p[5][0] for p in partial), max(p[5][1] for p in partial)
    return [
        ImageTransform(original, resized, crop_top, pad_top + (out_h - kept[0]) // 2,
                       pad_left + (out_w - kept[1]) // 2, (out_h, out_w))
        for original, resized, crop_top, pad_top, pad_left, kept in partial
    ]


def render(img: Image.Image, transform: ImageTransform) -> np.ndarray:
    """``[H, W, 3]`` uint8 model input of the RGB image ``img`` (of ``transform.original_size``): PIL BICUBIC
    resize, crop, then white padding as ``transform`` says."""
    height, width = transform.resized_size
    pixels = np.asarray(img.resize((width, height), Image.Resampling.BICUBIC))
    out_h, out_w = transform.output_size
    pixels = pixels[transform.crop_top : transform.crop_top + min(height, out_h)]
    top, left = transform.pad_top, transform.pad_left
    return np.pad(pixels, ((top, out_h - pixels.shape[0] - top), (left, out_w - pixels.shape[1] - left), (0, 0)),
                  constant_values=WHITE)


def preprocess_images(
    sources: Sequence[ImageSource], mode: PreprocessMode = "crop", target_size: int = 518
) -> PreprocessedImages:
    """Load and pre-process images exactly as VGGT's ``load_and_preprocess_images`` (target 518 there), with the
    geometry of :func:`plan_transforms`. If the results differ in size (crop mode with mixed aspect ratios) they
    are padded with white to one size and a ``UserWarning`` is issued.

    Returns images ``[N, 3, H, W]`` and one :class:`ImageTransform` per image.
    """
    if not sources:
        raise ValueError("no images given; pass at least one image path")
    loaded = [load_rgb(source) for source in sources]
    names = [f"image {i}" if isinstance(s, Image.Image) else str(s) for i, s in enumerate(sources)]
    transforms = plan_transforms([(img.height, img.width) for img in loaded], mode, target_size, names)
    if batch_padded(transforms, mode):
        warnings.warn(f"images have different sizes after pre-processing; padding them with white to "
                      f"{transforms[0].output_size[0]}x{transforms[0].output_size[1]}", stacklevel=2)
    arrays = [render(img, transform) for img, transform in zip(loaded, transforms, strict=True)]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)
    return PreprocessedImages(images=images, transforms=transforms)


def batch_padded(transforms: Sequence[ImageTransform], mode: PreprocessMode) -> list[int]:
    """Positions of the images padded to the size of the others (crop mode, another aspect ratio)."""
    return [i for i, t in enumerate(transforms) if mode == "crop" and (t.pad_top or t.pad_left)]


def resample_to_model(maps: np.ndarray, transform: ImageTransform) -> np.ndarray:
    """Original-resolution maps ``[..., H0, W0]`` -> model-input grid ``[..., H, W]`` by nearest original pixel.

    Every model pixel takes the original pixel its centre maps back to (``transform.unmap_pixels``);
    pixels outside the original image (padding) get 0, so the result is consistent with the adjusted K.
    """
    height, width = transform.output_size
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    uv = transform.unmap_pixels(np.stack([cols, rows], axis=-1))
    u, v = np.rint(uv[..., 0]).astype(np.int64), np.rint(uv[..., 1]).astype(np.int64)
    h0, w0 = transform.original_size
    inside = (u >= 0) & (u < w0) & (v >= 0) & (v < h0)
    out = np.zeros(maps.shape[:-2] + (height, width), dtype=maps.dtype)
    out[..., inside] = maps[..., v[inside], u[inside]]
    return out
