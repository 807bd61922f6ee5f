"""The multi-view clip record: T time steps × V cameras of images, optional depth, masks and cameras."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from page4d.data.preprocess import ImageSource, ImageTransform, PreprocessMode, preprocess_images, resample_to_model
from page4d.data.rasters import read_depth, read_mask


def _read_all(paths: list[list[Path]], read: Callable[[Path], np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """``[T, V, H, W]`` of ``read`` on every path; raises naming a file that is not (H, W) ``size``."""

    def checked(path: Path) -> np.ndarray:
        array = read(path)
        # sizes were checked when the clip was opened; a file replaced since would otherwise break np.stack obscurely
        if array.shape != size:
            raise ValueError(
                f"{path} is {array.shape[1]}x{array.shape[0]} but the images are {size[1]}x{size[0]} (W x H); "
                "give it at the image resolution"
            )
        return array

    return np.stack([np.stack([checked(path) for path in row]) for row in paths])


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
    image_size: tuple[int, int]
    """(H0, W0) shared by every image."""
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

    @property
    def num_times(self) -> int:
        return len(self.time_ids)

    @property
    def num_views(self) -> int:
        return len(self.view_ids)

    def load_images(
        self, mode: PreprocessMode = "crop", target_size: int = 518, times: range | None = None
    ) -> tuple[torch.Tensor, list[list[ImageTransform]]]:
        """Images ``[T', V, 3, H, W]`` in [0, 1], pre-processed as VGGT does, and the T' × V transforms.

        ``times``: positions (not ids) of the time steps to load; all of them by default."""
        times = range(self.num_times) if times is None else times
        flat = [frame for t in times for frame in self.frames[t]]
        batch = preprocess_images(flat, mode=mode, target_size=target_size)
        images = batch.images.reshape(len(times), self.num_views, *batch.images.shape[1:])
        transforms = [batch.transforms[i * self.num_views : (i + 1) * self.num_views] for i in range(len(times))]
        return images, transforms

    def load_external_masks(self, transform: ImageTransform, times: range | None = None) -> torch.Tensor:
        """External masks on the model-input grid, ``[T', V, H, W]`` float32 in {0, 1} (nearest pixel)."""
        if self.external_mask_paths is None:
            raise ValueError(f"{self.root}: no external masks were given")
        times = range(self.num_times) if times is None else times
        raw = _read_all([self.external_mask_paths[t] for t in times], read_mask, self.image_size)
        return torch.from_numpy(resample_to_model(raw.astype(np.float32), transform))

    def model_intrinsics(self, transforms: list[list[ImageTransform]]) -> torch.Tensor:
        """``intrinsics`` adjusted to the pre-processed images of :meth:`load_images`: ``[T, V, 3, 3]``."""
        if self.intrinsics is None:
            raise ValueError(f"{self.root}: the clip has no cameras.json, so there are no intrinsics to adjust")
        return torch.stack(
            [
                torch.stack([transforms[t][v].adjust_intrinsics(self.intrinsics[t, v]) for v in range(self.num_views)])
                for t in range(self.num_times)
            ]
        )

    def load_depths(self) -> torch.Tensor:
        """Depth ``[T, V, H0, W0]`` float32 in world units, bit-exact to the source; 0 = invalid."""
        if self.depth_paths is None:
            raise ValueError(f"{self.root}: the clip has no depths/ folder")
        divisor, multiplier = np.float32(self.depth_divisor), np.float32(self.depth_multiplier)
        raw = _read_all(self.depth_paths, read_depth, self.image_size)
        return torch.from_numpy(raw.astype(np.float32) / divisor * multiplier)

    def load_masks(self) -> torch.Tensor:
        """Dynamic masks ``[T, V, H0, W0]`` bool, True = moving."""
        if self.mask_paths is None:
            raise ValueError(f"{self.root}: the clip has no masks/ folder")
        return torch.from_numpy(_read_all(self.mask_paths, read_mask, self.image_size))
