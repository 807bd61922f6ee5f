"""The multi-view clip record: T time steps × V cameras of images, optional depth, masks and cameras."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from page4d.data.preprocess import (
    ImageSource,
    ImageTransform,
    PreprocessMode,
    plan_transforms,
    render,
    resample_to_model,
)
from page4d.data.rasters import load_rgb, read_depth, read_mask

if TYPE_CHECKING:
    from PIL import Image

    from page4d.data.lens import Lens


def _read_all(
    paths: list[list[Path]], read: Callable[[Path], np.ndarray], sizes: list[tuple[int, int]],
    transforms: list[ImageTransform] | None,
) -> np.ndarray:
    """``[T, V, H, W]`` of ``read`` on every path, resampled onto each view's model grid when ``transforms`` are
    given (else at the original resolution, which must then be shared); raises naming a file that is not its
    view's (H, W) in ``sizes``."""
    if transforms is None and len(set(sizes)) > 1:
        raise ValueError("the views have different resolutions, so their maps cannot be stacked at the original "
                         "resolution; pass the per-view transforms to get them on the model grid")

    def checked(path: Path, v: int) -> np.ndarray:
        array = read(path)
        # sizes were checked when the clip was opened; a file replaced since would otherwise break np.stack obscurely
        if array.shape != sizes[v]:
            height, width = sizes[v]
            raise ValueError(f"{path} is {array.shape[1]}x{array.shape[0]} but the view's images are "
                             f"{width}x{height} (W x H); give it at the image resolution")
        return array if transforms is None else resample_to_model(array, transforms[v])

    return np.stack([np.stack([checked(path, v) for v, path in enumerate(row)]) for row in paths])


@dataclass
class MultiViewClip:
    """A synchronised multi-view clip. Nested lists are indexed ``[t][v]`` in the order of ``time_ids``/``view_ids``.

    Cameras follow ``page4d.conventions``: ``extrinsics`` world-to-camera ``[R | t]`` (OpenCV axes),
    ``intrinsics`` pixel K for the original images, integer pixel = pixel centre.
    """

    root: Path
    time_ids: list[int]
    """Time index of each step (from the folder names; need not start at 0 or be contiguous)."""
    view_ids: list[int]
    """Camera index of each view (from the file names)."""
    frames: list[list[ImageSource]]
    """T × V images: files, or decoded frames (PIL) for video inputs."""
    image_sizes: list[tuple[int, int]]
    """(H0, W0) of each view's images (views may differ; the time steps of one view may not)."""
    depth_paths: list[list[Path]] | None = None
    """T × V uint16 depth PNGs, decoded as ``float32(k) / depth_divisor * depth_multiplier``; 0 = invalid."""
    mask_paths: list[list[Path]] | None = None
    """T × V ground-truth dynamic-object masks (non-zero grey, palette index or colour = moving), for evaluation."""
    external_mask_paths: list[list[Path]] | None = None
    """T × V external moving masks fed to the model (the design's ``M_ext``, e.g. from SegAnyMo); non-zero = moving."""
    intrinsics: torch.Tensor | None = None
    """``[T, V, 3, 3]`` float32."""
    extrinsics: torch.Tensor | None = None
    """``[T, V, 3, 4]`` float32, world-to-camera."""
    depth_divisor: float = 1000.0
    depth_multiplier: float = 6.0
    names: list[str] | None = None
    """A name per view (the video's or folder's stem) for matching calibrations; default ``viewN``."""
    lenses: list[Lens | None] | None = None
    """Per view, the lens distortion removed from each frame before pre-processing (``page4d.data.lens``)."""

    @property
    def num_times(self) -> int:
        return len(self.time_ids)

    @property
    def num_views(self) -> int:
        return len(self.view_ids)

    @property
    def view_names(self) -> list[str]:
        """A name per view for matching calibrations and messages: ``viewN`` (the clip layout's file stem)."""
        return self.names if self.names is not None else [f"view{v}" for v in self.view_ids]

    def transforms(self, mode: PreprocessMode = "crop", target_size: int = 518) -> list[ImageTransform]:
        """Each view's pre-processing geometry (``ImageTransform``, one per view), from the sizes alone."""
        return plan_transforms(self.image_sizes, mode, target_size, self.view_names)

    def load_images(
        self, mode: PreprocessMode = "crop", target_size: int = 518, times: range | None = None
    ) -> tuple[torch.Tensor, list[ImageTransform]]:
        """Images ``[T', V, 3, H, W]`` in [0, 1], pre-processed as VGGT does, and the transform of each view.

        Views of another aspect ratio (crop mode) are padded with white to the common size. ``times``: positions
        (not ids) of the time steps to load; all of them by default."""
        times = range(self.num_times) if times is None else times
        transforms = self.transforms(mode, target_size)
        arrays = [[self._render(self.frames[t][v], v, transforms[v]) for v in range(self.num_views)] for t in times]
        images = torch.from_numpy(np.stack(arrays)).permute(0, 1, 4, 2, 3).float().div(255)
        return images, transforms

    def _render(self, frame: ImageSource, view: int, transform: ImageTransform) -> np.ndarray:
        return render(self._original(frame, view), transform)

    def load_original(self, t: int, v: int) -> np.ndarray:
        """Frame (position ``t``, view ``v``) at its original resolution, as the model saw it (lens distortion
        removed): ``[H0, W0, 3]`` uint8."""
        return np.asarray(self._original(self.frames[t][v], v))

    def _original(self, frame: ImageSource, view: int) -> Image.Image:
        img = load_rgb(frame)
        if (img.height, img.width) != self.image_sizes[view]:  # replaced since the clip was opened
            height, width = self.image_sizes[view]
            raise ValueError(f"{frame}: {img.width}x{img.height} but the view's images are {width}x{height} "
                             "(W x H); every time step of a camera must have the same resolution")
        if self.lenses is not None and self.lenses[view] is not None:
            img = self.lenses[view].undistort(img)
        return img

    def load_external_masks(self, transforms: list[ImageTransform], times: range | None = None) -> torch.Tensor:
        """External masks on the model-input grid, ``[T', V, H, W]`` float32 in {0, 1} (nearest pixel)."""
        if self.external_mask_paths is None:
            raise ValueError(f"{self.root}: no external masks were given")
        times = range(self.num_times) if times is None else times
        rows = [self.external_mask_paths[t] for t in times]
        return torch.from_numpy(_read_all(rows, read_mask, self.image_sizes, transforms).astype(np.float32))

    def model_intrinsics(self, transforms: list[ImageTransform]) -> torch.Tensor:
        """``intrinsics`` adjusted to the pre-processed images of :meth:`load_images`: ``[T, V, 3, 3]``."""
        if self.intrinsics is None:
            raise ValueError(f"{self.root}: the clip has no cameras.json, so there are no intrinsics to adjust")
        return torch.stack([transforms[v].adjust_intrinsics(self.intrinsics[:, v]) for v in range(self.num_views)], 1)

    def load_depths(self, transforms: list[ImageTransform] | None = None) -> torch.Tensor:
        """Depth ``[T, V, H0, W0]`` float32 in world units, bit-exact to the source (or ``[T, V, H, W]`` on the
        model grid of ``transforms``, nearest pixel); 0 = invalid."""
        if self.depth_paths is None:
            raise ValueError(f"{self.root}: the clip has no depths/ folder")
        divisor, multiplier = np.float32(self.depth_divisor), np.float32(self.depth_multiplier)
        raw = _read_all(self.depth_paths, read_depth, self.image_sizes, transforms)
        return torch.from_numpy(raw.astype(np.float32) / divisor * multiplier)

    def load_masks(self, transforms: list[ImageTransform] | None = None) -> torch.Tensor:
        """Dynamic masks ``[T, V, H0, W0]`` bool, True = moving (or ``[T, V, H, W]`` on the model grid)."""
        if self.mask_paths is None:
            raise ValueError(f"{self.root}: the clip has no masks/ folder")
        return torch.from_numpy(_read_all(self.mask_paths, read_mask, self.image_sizes, transforms))
