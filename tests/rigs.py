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


def tabletop_cameras() -> tuple[list[str], np.ndarray, np.ndarray, tuple[int, int]]:
    """Names, K ``[V, 3, 3]``, world-to-camera ``[V, 3, 4]`` (the rig is static) and (width, height) of tabletop4v."""
    cameras = json.loads((TABLETOP / "cameras.json").read_text())
    size = (cameras["image_size"]["width"], cameras["image_size"]["height"])
    names = [f"view{v}" for v in cameras["view_ids"]]
    return names, np.asarray(cameras["K"][0], dtype=np.float64), np.asarray(cameras["E_w2c"][0], np.float64), size


def write_toml(path: Path, cameras: list[tuple[str, np.ndarray, np.ndarray]], image_size: tuple[int, int],
               lenses: list[list[float]] | None = None, **overrides: str) -> Path:
    """An anipose calibration of ``cameras`` (name, K, world-to-camera) for (width, height) ``image_size`` images,
    with ``lenses`` as each camera's distortions, written independently of page4d's reader (scipy for the Rodrigues
    vectors); ``overrides`` replace fields of every table (TOML source text)."""
    from scipy.spatial.transform import Rotation

    lines = []
    for index, (name, k, w2c) in enumerate(cameras):
        distortion = [0.0] * 4 if lenses is None else lenses[index]
        table = {"name": json.dumps(name), "size": json.dumps(list(image_size)), "matrix": json.dumps(k.tolist()),
                 "distortions": json.dumps(distortion),
                 "rotation": json.dumps(Rotation.from_matrix(w2c[:, :3]).as_rotvec().tolist()),
                 "translation": json.dumps(w2c[:, 3].tolist()), **overrides}
        lines += [f"[cam_{index}]", *(f"{key} = {value}" for key, value in table.items()), ""]
    lines += ["[metadata]", "adjusted = false", ""]
    path.write_text("\n".join(lines).replace("NaN", "nan"))
    return path


def write_colmap_calibration(folder: Path, cameras: list[tuple[str, np.ndarray, np.ndarray]],
                             size: tuple[int, int]) -> Path:
    """A binary COLMAP model with one PINHOLE camera and image per view (COLMAP's half-pixel offset added)."""
    import pycolmap

    model = pycolmap.Reconstruction()
    for index, (name, k, w2c) in enumerate(cameras, start=1):
        params = [k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5]
        model.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=size[0], height=size[1],
                                                          params=params, camera_id=index))
        image = pycolmap.Image(name=f"{name}.png", camera_id=index, image_id=index)
        model.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(w2c[:, :3]), w2c[:, 3]))
    folder.mkdir(parents=True, exist_ok=True)
    model.write_binary(str(folder))
    return folder


def distorted_clip(root: Path, times: list[int], distortions: list[list[float]]) -> Path:
    """tabletop4v's ``times`` (images only) as cameras with lens distortion ``distortions`` (one per view) would
    record them: each recorded pixel samples the pinhole image where OpenCV's undistortion of it points."""
    import cv2

    _, intrinsics, _, (width, height) = tabletop_cameras()
    v_grid, u_grid = np.mgrid[0:height, 0:width].astype(np.float64)
    recorded = np.stack([u_grid.ravel(), v_grid.ravel()], axis=1)[:, None]
    for view, (k, distortion) in enumerate(zip(intrinsics, distortions, strict=True)):
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-10)
        source = cv2.undistortPoints(recorded, k, np.array(distortion), R=None, P=k, criteria=criteria)[:, 0]
        map_x, map_y = (source[:, i].reshape(height, width).astype(np.float32) for i in (0, 1))
        for t in times:
            folder = root / "images" / f"time_{t:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            pinhole = np.asarray(Image.open(TABLETOP / "images" / f"time_{t:02d}" / f"view{view}.png").convert("RGB"))
            Image.fromarray(cv2.remap(pinhole, map_x, map_y, cv2.INTER_CUBIC)).save(folder / f"view{view}.png")
    return root
