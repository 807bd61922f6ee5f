"""A clip's ground truth (depth, masks, cameras) as a :class:`Reconstruction` on the model-input grid.

Used to look at a capture's calibration with ``page4d view CLIP`` and as an exact reference in tests.
"""

from __future__ import annotations

import numpy as np
import torch

from page4d.data.clip import MultiViewClip
from page4d.data.preprocess import PreprocessMode
from page4d.reconstruction.record import Reconstruction, transform_meta


def reconstruction_from_clip(clip: MultiViewClip, mode: PreprocessMode = "crop", size: int = 518) -> Reconstruction:
    """Ground-truth cameras, depth, points and dynamic mask of ``clip`` (it needs ``cameras.json`` and ``depths/``).

    Confidences are 1 where the depth is valid and 0 elsewhere; the mask is all 0 when the clip has no ``masks/``.
    """
    if clip.intrinsics is None or clip.depth_paths is None:
        raise ValueError(f"{clip.root}: ground truth needs cameras.json and a depths/ folder")
    images, transforms = clip.load_images(mode=mode, target_size=size)
    depth = clip.load_depths(transforms).numpy()
    mask = clip.load_masks(transforms).numpy() if clip.mask_paths is not None else None
    valid = (depth > 0).astype(np.float32)
    intrinsic = clip.model_intrinsics(transforms).numpy()
    recon = Reconstruction(
        time_ids=np.asarray(clip.time_ids), view_ids=np.asarray(clip.view_ids),
        images=(images.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8).numpy(),
        extrinsic=clip.extrinsics.numpy(), intrinsic=intrinsic, intrinsic_original=clip.intrinsics.numpy(),
        depth=depth, depth_conf=valid, world_points=np.zeros(depth.shape + (3,), np.float32),
        world_points_conf=valid, dynamic_mask=None if mask is None else mask.astype(np.float32),
        meta={
            "model": "ground truth", "weights": f"ground truth of {clip.root}", "untrained": False,
            "input": str(clip.root), "transforms": [transform_meta(t) for t in transforms],
            "preprocess": {"mode": mode, "size": size},
        },
    )
    recon.world_points = recon.depth_points() * valid[..., None]
    return recon
