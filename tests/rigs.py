"""Real-rig test data derived from ``../shared/data/tabletop4v``: views at other resolutions and aspect ratios,
with the calibration (K at each view's resolution) written next to them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import SHARED
from PIL import Image

TABLETOP = SHARED / "data" / "tabletop4v"
RESIZED = {1: (320, 240), 3: (480, 480)}
"""View -> new (width, height): view 1 at half size (same aspect ratio), view 3 squashed to a square."""


def scaled_intrinsic(k: np.ndarray, old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """K of an image resized from ``old`` to ``new`` (width, height), pixel centres at integers:
    ``u' = s·(u + 0.5) − 0.5``."""
    sx, sy = new[0] / old[0], new[1] / old[1]
    scale = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    return scale @ k


def mixed_resolution_clip(root: Path, times: list[int], resized: dict[int, tuple[int, int]] = RESIZED) -> Path:
    """A clip folder of tabletop4v's ``times`` whose views in ``resized`` are resampled (bicubic images, nearest
    depths and masks), with ``cameras.json`` listing each view's K and size (``image_sizes``)."""
    cameras = json.loads((TABLETOP / "cameras.json").read_text())
    size = (cameras["image_size"]["width"], cameras["image_size"]["height"])
    for folder, resample in (("images", Image.Resampling.BICUBIC), ("depths", Image.Resampling.NEAREST),
                             ("masks", Image.Resampling.NEAREST)):
        for t in times:
            (root / folder / f"time_{t:02d}").mkdir(parents=True)
            for v in cameras["view_ids"]:
                name = f"time_{t:02d}/view{v}.png"
                with Image.open(TABLETOP / folder / name) as img:
                    out = img.resize(resized[v], resample) if v in resized else img.copy()
                out.save(root / folder / name)
    positions = [cameras["time_ids"].index(t) for t in times]
    intrinsics = np.asarray(cameras["K"], dtype=np.float64)[positions]
    for v, new in resized.items():
        intrinsics[:, v] = scaled_intrinsic(intrinsics[:, v], size, new)
    sizes = [dict(zip(("width", "height"), resized.get(v, size), strict=True)) for v in cameras["view_ids"]]
    (root / "cameras.json").write_text(json.dumps({
        "time_ids": times, "view_ids": cameras["view_ids"], "image_sizes": sizes, "K": intrinsics.tolist(),
        "E_w2c": np.asarray(cameras["E_w2c"])[positions].tolist(),
    }))
    return root
