"""Run a model over a clip, window by window, into one :class:`Reconstruction`."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from page4d.config import ModelConfig
from page4d.data.clip import MultiViewClip
from page4d.data.preprocess import ImageTransform, PreprocessMode, model_input_size
from page4d.model import Page4D
from page4d.reconstruction.record import Reconstruction, transform_meta
from page4d.reconstruction.spool import Spool
from page4d.reconstruction.windows import apply_sim3, fit_overlap, plan_windows

SMALL = ("extrinsic", "intrinsic")
"""Outputs kept in memory even when the dense ones are spooled to disk."""
MEMORY_FRACTION = 0.5
"""Share of the free memory the automatic window size plans to use (the rest is left for outputs and others)."""
MAX_SIZE_FACTOR = 4
"""The largest input width a model is run at, as a multiple of the width it was trained at: beyond it the tokens
(16× at 4×) cost far more than they give, and a typo such as 140000 would otherwise end in a MemoryError."""


@dataclass(frozen=True)
class WindowPlan:
    """How a clip is cut in time: ``window`` steps per forward pass, consecutive passes sharing ``overlap``."""

    window: int
    overlap: int


def min_patches(config: ModelConfig) -> int:
    """Patches per frame the model needs: a landmark sparse block picks ``num_landmarks`` anchors in each frame."""
    sparse = config.aggregator.sparse_global
    return max(1, sparse.num_landmarks if sparse is not None and sparse.strategy == "landmark" else 1)


def check_input_size(config: ModelConfig, original_size: tuple[int, int], mode: PreprocessMode, size: int,
                     name: str = "--size") -> None:
    """Raise ``ValueError`` unless images of ``original_size`` (H0, W0) pre-processed at ``size`` fit the model:
    at most ``MAX_SIZE_FACTOR`` × its trained width, and enough patches per frame for its mechanisms."""
    limit = MAX_SIZE_FACTOR * config.input_width
    if size > limit:
        raise ValueError(f"{name} {size} is more than this model takes: at most {limit} ({MAX_SIZE_FACTOR}× the "
                         f"{config.input_width} px it was trained at, where it is most accurate); lower {name}")
    p, need = config.patch_size, min_patches(config)

    def patches(target: int) -> int:
        height, width = model_input_size(original_size, mode, target)
        return (height // p) * (width // p)

    if patches(size) < need:
        smallest = next((s for s in range(size, limit + 1, p) if patches(s) >= need), None)
        height, width = model_input_size(original_size, mode, size)
        fix = f"use {name} {smallest} or more" if smallest else "crop the images to a less extreme aspect ratio"
        why = f"its landmark sparse block picks {need} anchors in each" if need > 1 else "at least one"
        raise ValueError(f"{name} {size} gives {width // p}×{height // p} patches per image, fewer than the {need} "
                         f"this model needs ({why}); {fix}")


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``). Between windows the allocator otherwise
    keeps the fragments of the last window's large buffers, and the resident size creeps up window by window."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            ctypes.CDLL(None).malloc_trim(0)


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def bytes_per_frame(model: Page4D, image_size: tuple[int, int]) -> int:
    """Rough peak bytes one frame adds to a forward pass: the kept aggregator entries (2C each) plus about 24
    token-sized working buffers (encoder, attention, MLP), and about 80 bytes per pixel for the input and the
    full-resolution outputs (10 float32 channels, held as a tensor and as a numpy copy).

    For ``tiny-mv`` at 518×392 this gives 21 MB where a 16 × 4 pass measures 18 MB per frame; the full-size
    ``page4d-mv`` gives 145 MB."""
    tokens = (image_size[0] // model.config.patch_size) * (image_size[1] // model.config.patch_size)
    width = model.config.aggregator.embed_dim
    return tokens * width * 4 * (2 * len(model.required_entries()) + 24) + image_size[0] * image_size[1] * 80


def choose_window(model: Page4D, clip: MultiViewClip, image_size: tuple[int, int], device: torch.device) -> int:
    """Time steps per window that fit ``MEMORY_FRACTION`` of the free memory (at least 2, at most the clip)."""
    budget = MEMORY_FRACTION * available_memory(device)
    steps = int(budget // (bytes_per_frame(model, image_size) * clip.num_views))
    return max(2, min(clip.num_times, steps))


def _predict(
    model: Page4D, clip: MultiViewClip, times: range, mode: PreprocessMode, size: int
) -> tuple[dict[str, np.ndarray], np.ndarray, ImageTransform]:
    """One forward pass over ``times``: numpy ``[T', V, ...]`` outputs, uint8 images and the pixel transform."""
    images, transforms = clip.load_images(mode=mode, target_size=size, times=times)
    transform = transforms[0][0]
    external = None
    if clip.external_mask_paths is not None:
        external = clip.load_external_masks(transform, times)[None]
    pred = model.infer(images[None], external_mask=external)
    out = {
        "extrinsic": pred.extrinsic[0], "intrinsic": pred.intrinsic[0], "depth": pred.depth[0, ..., 0],
        "depth_conf": pred.depth_conf[0], "world_points": pred.world_points[0],
        "world_points_conf": pred.world_points_conf[0], "dynamic_mask": pred.dynamic_mask,
    }
    if out["dynamic_mask"] is not None:
        out["dynamic_mask"] = out["dynamic_mask"][0]
    arrays = {k: v.float().cpu().numpy() for k, v in out.items() if v is not None}
    pixels = (images.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8).numpy()
    return arrays, pixels, transform


def _overlap_fit(
    previous: dict[str, np.ndarray], arrays: dict[str, np.ndarray], shared: slice
) -> tuple[float, np.ndarray, np.ndarray]:
    """Sim(3) taking a new window's world into the stitched one, from the time steps it shares with the previous
    (already aligned) window: ``shared`` indexes them in the previous window; they open the new one."""

    def frames(source: dict[str, np.ndarray], steps: slice) -> dict[str, np.ndarray]:
        keys = ("depth", "depth_conf", "extrinsic", "intrinsic")
        return {k: source[k][steps].reshape(-1, *source[k].shape[2:]) for k in keys}

    return fit_overlap(frames(previous, shared), frames(arrays, slice(0, shared.stop - shared.start)))


def reconstruct(
    model: Page4D,
    clip: MultiViewClip,
    mode: PreprocessMode = "crop",
    size: int = 518,
    plan: WindowPlan | None = None,
    progress: bool = True,
    spool: Path | None = None,
) -> Reconstruction:
    """Predict every (t, v) of ``clip``; with a ``plan`` shorter than the clip, window by window (module docstring
    of ``page4d.reconstruction.windows``). The world frame is the predicted camera (t0, v0).

    With a ``spool`` folder the dense outputs are written there as they are made and the result reads them
    from disk (:class:`~page4d.reconstruction.spool.StepArray`), so memory stays that of one window.
    """
    windows = [range(clip.num_times)] if plan is None else plan_windows(clip.num_times, plan.window, plan.overlap)
    store = Spool(spool) if spool is not None else None
    blocks: dict[str, list[np.ndarray]] = {}
    previous: tuple[int, dict[str, np.ndarray]] | None = None
    done = 0
    bar = tqdm(total=clip.num_times * clip.num_views, unit="frame", desc="reconstruct", disable=not progress)
    for index, times in enumerate(windows):
        arrays, pixels, transform = _predict(model, clip, times, mode, size)
        arrays["images"] = pixels
        if previous is not None:
            first, aligned = previous
            apply_sim3(arrays, *_overlap_fit(aligned, arrays, slice(times.start - first, done - first)))
        for key, value in arrays.items():
            block = value[done - times.start :]
            if store is not None and key not in SMALL:
                store.append(key, block)
            else:
                blocks.setdefault(key, []).append(block)
        if index + 1 < len(windows):  # keep only what the next window's alignment reads
            first = windows[index + 1].start
            previous = (first, {k: arrays[k][first - times.start :].copy() for k in ("depth", "depth_conf", *SMALL)})
        del arrays, pixels
        release_free_memory()
        bar.update((times.stop - done) * clip.num_views)
        done = times.stop
    bar.close()
    out = {k: np.concatenate(v) for k, v in blocks.items()}
    if store is not None:
        out.update(store.arrays)
    with np.errstate(invalid="ignore"):  # an untrained camera head can predict infinite focal lengths
        intrinsic_original = np.linalg.inv(transform.pixel_matrix()) @ out["intrinsic"].astype(np.float64)
    return Reconstruction(
        time_ids=np.asarray(clip.time_ids), view_ids=np.asarray(clip.view_ids), images=out["images"],
        extrinsic=out["extrinsic"], intrinsic=out["intrinsic"],
        intrinsic_original=intrinsic_original.astype(np.float32),
        depth=out["depth"], depth_conf=out["depth_conf"], world_points=out["world_points"],
        world_points_conf=out["world_points_conf"], dynamic_mask=out.get("dynamic_mask"),
        meta={
            "original_size": list(clip.image_size), "transform": transform_meta(transform),
            "preprocess": {"mode": mode, "size": size},
            "windows": [[w.start, w.stop] for w in windows],
        },
    )
