"""``Reconstruction``: the ``[T, V, ...]`` arrays ``page4d reconstruct`` writes and ``view`` / ``eval`` / exports read.

On disk a reconstruction is a folder::

    predictions.npz   the arrays below (numpy, uncompressed)
    meta.json         provenance (model, weights, untrained flag, pre-processing, timings) + ``transform``
    cameras.json      K at the original resolution and world-to-camera extrinsics, in the clip layout's format

Conventions are ``page4d.conventions``: OpenCV axes, world-to-camera ``[R | t]``, world as ``meta["world"]`` says
(the calibration's, or the model's: camera (t0, v0) of the first window), z-depth, ``dynamic_mask`` 1 = moving.
Dense maps are at the model-input resolution ``(H, W)``; ``meta["transforms"]`` maps each view's original pixels to
model-input pixels (one ``ImageTransform`` per view: cameras of different resolutions have different ones).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from page4d.data.preprocess import ImageTransform
from page4d.fileio import read_json
from page4d.geometry.unprojection import unproject_depth
from page4d.reconstruction.spool import Spool, write_npz
from page4d.refine.tracks import TrackedPoints

PREDICTIONS = "predictions.npz"
META = "meta.json"
CAMERAS = "cameras.json"
CAMERAS_FORMAT = "page4d cameras v1"
REQUIRED_META = ("transforms",)
"""What ``load`` needs from ``meta.json`` to map the dense maps back to the original images."""
CONVENTION = (
    "E_w2c = [R|t] maps world to camera: x_cam = R @ x_world + t. Camera axes OpenCV (x right, y down, z forward). "
    "Pixel (u, v) = (column, row), integer = pixel centre; u = fx*x/z + cx. World: meta.json's 'world' (the "
    "calibration's with --cameras poses, else the model's)."
)


@dataclass
class Reconstruction:
    """Per-(t, v) predictions of one clip: numpy arrays indexed ``[t, v]`` in ``time_ids`` / ``view_ids`` order."""

    time_ids: np.ndarray
    """``[T]`` int64 time index of each step (from the input)."""
    view_ids: np.ndarray
    """``[V]`` int64 camera index of each view."""
    images: np.ndarray
    """``[T, V, H, W, 3]`` uint8 model-input RGB (what the model saw)."""
    extrinsic: np.ndarray
    """``[T, V, 3, 4]`` float32 world-to-camera."""
    intrinsic: np.ndarray
    """``[T, V, 3, 3]`` float32 pixel K at the model-input resolution."""
    intrinsic_original: np.ndarray
    """``[T, V, 3, 3]`` float32 pixel K at the original image resolution."""
    depth: np.ndarray
    """``[T, V, H, W]`` float32 z-depth."""
    depth_conf: np.ndarray
    """``[T, V, H, W]`` float32 depth confidence (> 1, higher is better)."""
    world_points: np.ndarray
    """``[T, V, H, W, 3]`` float32 world points of the point head.

    Dense fields (images, depth, confidences, points, mask) may be ``StepArray`` s (``page4d.reconstruction.spool``)
    read from disk step by step; index them per time step (``recon.depth[t]``) or ``np.asarray`` them whole."""
    world_points_conf: np.ndarray
    """``[T, V, H, W]`` float32 point confidence."""
    dynamic_mask: np.ndarray | None = None
    """``[T, V, H, W]`` float32 probability of moving (1 = moving); None for models without a mask head."""
    meta: dict = field(default_factory=dict)
    """Provenance; ``meta["transforms"]`` holds each view's ``ImageTransform`` fields."""
    tracks: TrackedPoints | None = field(default=None, repr=False, compare=False)
    """Multi-view tracks and their refined points (``--refine ba``), saved as ``tracks.npz``; None otherwise."""
    spool: Spool | None = field(default=None, repr=False, compare=False)
    """The files the spooled dense fields are read from; removed by ``close`` (or when the record is collected)."""

    ARRAYS = (
        "time_ids", "view_ids", "images", "extrinsic", "intrinsic", "intrinsic_original", "depth", "depth_conf",
        "world_points", "world_points_conf", "dynamic_mask",
    )

    @property
    def num_times(self) -> int:
        return len(self.time_ids)

    @property
    def num_views(self) -> int:
        return len(self.view_ids)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the dense maps."""
        return self.depth.shape[-2], self.depth.shape[-1]

    @property
    def transforms(self) -> list[ImageTransform]:
        """Each view's original -> model-input pixel mapping (shared by its time steps)."""
        if "transforms" not in self.meta:
            raise ValueError("this reconstruction's meta.json has no 'transforms'; re-run page4d reconstruct")
        return [ImageTransform(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})
                for entry in self.meta["transforms"]]

    @property
    def original_sizes(self) -> list[tuple[int, int]]:
        """(H0, W0) of each view's input images."""
        return [t.original_size for t in self.transforms]

    @property
    def untrained(self) -> bool:
        return bool(self.meta.get("untrained", False))

    def depth_points(self, t: int | None = None) -> np.ndarray:
        """World points unprojected from ``depth`` with the predicted cameras (VGGT reports these as more accurate
        than the point head's): ``[T, V, H, W, 3]`` float32, or ``[V, H, W, 3]`` for time step index ``t``."""
        steps = slice(None) if t is None else slice(t, t + 1)
        depth, extrinsic, intrinsic = (torch.from_numpy(np.asarray(a[steps])).flatten(0, 1)
                                       for a in (self.depth, self.extrinsic, self.intrinsic))
        points = unproject_depth(depth, extrinsic, intrinsic).unflatten(0, (-1, self.num_views)).numpy()
        return points if t is None else points[0]

    def cameras_json(self) -> dict:
        """The cameras in the clip layout's ``cameras.json`` format (K at the original resolution)."""
        sizes = [{"width": int(width), "height": int(height)} for height, width in self.original_sizes]
        return {
            "format": CAMERAS_FORMAT,
            **({"image_size": sizes[0]} if all(s == sizes[0] for s in sizes) else {"image_sizes": sizes}),
            "time_ids": [int(t) for t in self.time_ids],
            "view_ids": [int(v) for v in self.view_ids],
            **({"view_names": self.meta["view_names"]} if "view_names" in self.meta else {}),
            "index_order": "K[ti][vi], E_w2c[ti][vi] with ti = position in time_ids, vi = position in view_ids",
            "convention": CONVENTION,
            "K": _strict(self.intrinsic_original.astype(np.float64).round(6)),
            "E_w2c": _strict(self.extrinsic.astype(np.float64).round(7)),
        }

    def close(self) -> None:
        """Remove the spool files (if any); the spooled fields cannot be read afterwards."""
        if self.spool is not None:
            self.spool.remove()

    def __enter__(self) -> Reconstruction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save(self, folder: Path) -> list[Path]:
        """Write ``predictions.npz``, ``meta.json`` and ``cameras.json`` (and ``tracks.npz`` when refined) into
        ``folder``; returns the paths."""
        arrays = {name: getattr(self, name) for name in self.ARRAYS if getattr(self, name) is not None}
        write_npz(folder / PREDICTIONS, arrays)
        (folder / META).write_text(json.dumps(self.meta, indent=2))
        (folder / CAMERAS).write_text(json.dumps(self.cameras_json(), indent=1, allow_nan=False))
        files = [folder / PREDICTIONS, folder / META, folder / CAMERAS]
        if self.tracks is not None:
            write_npz(folder / TrackedPoints.FILE, self.tracks.arrays())
            files.append(folder / TrackedPoints.FILE)
        return files

    @classmethod
    def load(cls, folder: str | Path) -> Reconstruction:
        """Read a folder written by :meth:`save`. Raises ``ValueError`` saying what is missing or broken."""
        folder = Path(folder)
        path = folder / PREDICTIONS if folder.is_dir() else folder
        if not path.is_file():
            raise ValueError(f"{folder}: no {PREDICTIONS}; pass the output folder of page4d reconstruct")
        try:
            with np.load(path) as data:
                arrays = {name: data[name] for name in data.files if name in cls.ARRAYS}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"{path}: cannot read the predictions ({err}); re-run page4d reconstruct") from None
        missing = [name for name in cls.ARRAYS if name != "dynamic_mask" and name not in arrays]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}; re-run page4d reconstruct with this version")
        meta_path = path.parent / META
        if not meta_path.is_file():
            raise ValueError(f"{meta_path}: not found; it comes with {PREDICTIONS} (the pixel transform is in it): "
                             "pass the whole output folder of page4d reconstruct, or re-run it")
        meta = read_json(meta_path, "re-run page4d reconstruct to rewrite it")
        lacking = [key for key in REQUIRED_META if not isinstance(meta, dict) or key not in meta]
        if lacking:
            raise ValueError(f"{meta_path}: no {', '.join(map(repr, lacking))} (how the images were pre-processed); "
                             "re-run page4d reconstruct to rewrite it")
        if not isinstance(meta["transforms"], list) or len(meta["transforms"]) != len(arrays["view_ids"]):
            raise ValueError(f"{meta_path}: 'transforms' must hold one entry per view ({len(arrays['view_ids'])}); "
                             "re-run page4d reconstruct to rewrite it")
        tracks = None
        if (path.parent / TrackedPoints.FILE).is_file():
            try:
                with np.load(path.parent / TrackedPoints.FILE) as data:
                    tracks = TrackedPoints.from_arrays(dict(data))
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
                raise ValueError(f"{path.parent / TrackedPoints.FILE}: cannot read the tracks ({err}); re-run page4d "
                                 "reconstruct --refine ba, or remove the file to load the rest") from None
        return cls(**arrays, meta=meta, tracks=tracks)


def _strict(values: np.ndarray) -> list:
    """Nested lists with ``null`` for NaN / Inf (an untrained camera head predicts them), which strict JSON readers
    refuse as numbers; the clip layout reads ``null`` back as NaN."""
    return np.where(np.isfinite(values), values, None).tolist()


def restore_intrinsics(intrinsic: np.ndarray, transforms: list[ImageTransform]) -> np.ndarray:
    """Model-input ``K [T, V, 3, 3]`` -> each view's original-resolution K (``transforms``: one per view)."""
    return np.stack([t.restore_intrinsics(intrinsic[:, v]) for v, t in enumerate(transforms)], axis=1)


def transform_meta(transform: ImageTransform) -> dict:
    """``ImageTransform`` as JSON-ready values for ``meta["transform"]``."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(transform).items()}
