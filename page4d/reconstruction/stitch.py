"""The window loop of a reconstruction: predict each window (or read what another process predicted), put the
calibrated K in, register the window to the ones before it, and keep its new time steps (dense outputs spooled to
disk as they come)."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from page4d.attention_plans import AttentionPlan
from page4d.data.clip import MultiViewClip
from page4d.data.preprocess import ImageTransform, PreprocessMode
from page4d.reconstruction.calibrated import Calibration, CalibrationCheck
from page4d.reconstruction.record import Reconstruction, restore_intrinsics, transform_meta
from page4d.reconstruction.registration import (
    Calibrated,
    CameraRegistration,
    OverlapRegistration,
    Registration,
    RigDecision,
    RigMode,
    decide_rig,
)
from page4d.reconstruction.spool import Spool

SMALL = ("extrinsic", "intrinsic")
"""Outputs kept in memory even when the dense ones are spooled to disk."""
Prediction = tuple[dict[str, np.ndarray], np.ndarray]
"""One window's numpy ``[T', V, ...]`` outputs and its uint8 images ``[T', V, H, W, 3]``."""


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``). Between windows the allocator otherwise
    keeps the fragments of the last window's large buffers, and the resident size creeps up window by window."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            ctypes.CDLL(None).malloc_trim(0)


def model_intrinsics(calibration: Calibration, transforms: list[ImageTransform], steps: int) -> np.ndarray:
    """``[T', V, 3, 3]`` float32 calibrated K on the model-input grid."""
    grid = np.stack([t.adjust_intrinsics(k) for t, k in zip(transforms, calibration.intrinsics(), strict=True)])
    return np.broadcast_to(grid, (steps, *grid.shape)).astype(np.float32)


def stitch(
    predict: Callable[[int, range], Prediction],
    clip: MultiViewClip,
    transforms: list[ImageTransform],
    mode: PreprocessMode,
    size: int,
    windows: list[range],
    progress: bool,
    store: Spool | None,
    rig: RigMode,
    calibration: Calibration | None,
    attention: AttentionPlan,
) -> Reconstruction:
    """The window loop: predict (``predict(index, times)``: run the model, or read what another process ran), put
    the calibrated K in, register each window (the first one decides the rig; ``per-step`` registers each step on
    its own), keep the new steps. ``transforms``: each view's pre-processing."""
    blocks: dict[str, list[np.ndarray]] = {}
    previous: tuple[int, dict[str, np.ndarray]] | None = None
    registration: Registration | None = None
    check = None if calibration is None else CalibrationCheck(clip.view_names)
    done = 0
    bar = tqdm(total=clip.num_times * clip.num_views, unit="frame", desc="reconstruct", disable=not progress)
    for index, times in enumerate(windows):
        arrays, pixels = predict(index, times)
        arrays["images"] = pixels
        if calibration is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                check.add_intrinsics(restore_intrinsics(arrays["intrinsic"], transforms), calibration.intrinsics())
            arrays["intrinsic"] = model_intrinsics(calibration, transforms, len(times)).copy()
        if registration is None:
            decision = decide_rig(rig, arrays, calibrated_kind(calibration), attention.name == "per-step")
            registration = _registration(decision, calibration, clip, check)
        shared = None
        if previous is not None:
            first, aligned = previous
            shared = (slice(times.start - first, done - first), aligned)
        if attention.name == "per-step":
            _register_steps(registration, arrays, times)
        else:
            registration.register(arrays, times, shared)
        for key, value in arrays.items():
            block = value[done - times.start :]
            if store is not None and key not in SMALL:
                store.append(key, block)
            else:
                blocks.setdefault(key, []).append(block)
        if index + 1 < len(windows):  # keep only what the next window's registration reads
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
    registration.finish(out)
    with np.errstate(invalid="ignore"):  # an untrained camera head can predict infinite focal lengths
        intrinsic_original = restore_intrinsics(out["intrinsic"], transforms)
    meta = {
        "transforms": [transform_meta(t) for t in transforms], "view_names": clip.view_names,
        "preprocess": {"mode": mode, "size": size},
        "windows": [[w.start, w.stop] for w in windows],
        "rig": decision.meta(clip.view_names),
        "world": _world(decision, calibration, attention),
    }
    if calibration is not None:
        meta["calibration"] = {"source": calibration.source, "match": calibration.match,
                               "poses": calibration.has_poses, "check": check.summary()}
    return Reconstruction(
        time_ids=np.asarray(clip.time_ids), view_ids=np.asarray(clip.view_ids), images=out["images"],
        extrinsic=out["extrinsic"], intrinsic=out["intrinsic"], intrinsic_original=intrinsic_original,
        depth=out["depth"], depth_conf=out["depth_conf"], world_points=out["world_points"],
        world_points_conf=out["world_points_conf"], dynamic_mask=out.get("dynamic_mask"),
        meta=meta, spool=store,
    )


def _register_steps(registration: Registration, arrays: dict[str, np.ndarray], times: range) -> None:
    """Register a ``per-step`` window one step at a time (each step is in its own frame and scale), in place."""
    for i, t in enumerate(times):
        step = {k: v[i : i + 1] for k, v in arrays.items()}
        registration.register(step, range(t, t + 1), None)
        for key, value in step.items():
            if not np.shares_memory(value, arrays[key]):  # a registration may replace an array, not only edit it
                arrays[key][i : i + 1] = value


def calibrated_kind(calibration: Calibration | None) -> Calibrated:
    if calibration is None or not calibration.has_poses:
        return "none"
    return "moving" if calibration.moving else "static"


def _registration(
    decision: RigDecision, calibration: Calibration | None, clip: MultiViewClip, check: CalibrationCheck | None
) -> Registration:
    if calibration is not None and calibration.has_poses:
        return CameraRegistration(calibration.poses(clip.time_ids), check)
    if decision.mode == "static":
        return CameraRegistration(None)
    return OverlapRegistration()


def _world(decision: RigDecision, calibration: Calibration | None, attention: AttentionPlan) -> str:
    """What the output world and units are (``meta.json``'s ``world``)."""
    if calibration is not None and calibration.has_poses:
        return "the calibration's world and units"
    if decision.mode == "static":
        first = "time step" if attention.name == "per-step" else "window"
        return f"the model's world and units of the first {first}, each camera at its pose averaged over the clip"
    return "the predicted camera (t0, v0) of the first window, in the model's units"
