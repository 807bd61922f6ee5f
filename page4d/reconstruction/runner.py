"""Run a model over a clip, window by window, into one :class:`Reconstruction`."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from page4d import __version__
from page4d.aggregator.grid import GridShard
from page4d.aggregator.sparse_strategies import STRATEGIES
from page4d.attention_plans import ATTENTION_PLANS, AttentionPlan, resolve_plan
from page4d.checkpoints.pretrained import load_pretrained
from page4d.checkpoints.report import LoadReport
from page4d.config import ModelConfig
from page4d.data.clip import MultiViewClip
from page4d.data.preprocess import PreprocessMode, batch_padded, plan_transforms
from page4d.distributed.processes import Processes
from page4d.inputs import ForwardInputs
from page4d.model import Page4D
from page4d.presets import PRESETS, preset
from page4d.reconstruction.budget import choose_window
from page4d.reconstruction.calibrated import Calibration
from page4d.reconstruction.record import Reconstruction
from page4d.reconstruction.registration import (
    RigMode,
    check_rig,
)
from page4d.reconstruction.scaleout import resolve_shard, share_windows
from page4d.reconstruction.spool import Spool
from page4d.reconstruction.stitch import Prediction, calibrated_kind, model_intrinsics, stitch
from page4d.reconstruction.windows import plan_windows
from page4d.refine.modes import REFINE_MODES, RefineOptions

MAX_SIZE_FACTOR = 4
"""The largest input width a model is run at, as a multiple of the width it was trained at: beyond it the tokens
(16× at 4×) cost far more than they give, and a typo such as 140000 would otherwise end in a MemoryError."""


@dataclass(frozen=True)
class WindowPlan:
    """How a clip is cut in time: ``window`` steps per forward pass (``auto``: what fits ``MEMORY_FRACTION`` of the
    free memory; ``all``: one pass), consecutive passes sharing ``overlap`` steps (0 only where windows register
    through known cameras: a static rig of several cameras, or calibrated poses)."""

    window: int | Literal["auto", "all"] = "auto"
    overlap: int = 2

    def __post_init__(self) -> None:
        if self.window not in ("auto", "all") and not (isinstance(self.window, int) and self.window >= 2):
            raise ValueError(f"window {self.window!r}: give 'auto', 'all' or a number of time steps >= 2")
        if self.overlap < 0:
            raise ValueError(f"overlap {self.overlap} must be at least 0 (consecutive windows share overlap steps)")
        if isinstance(self.window, int) and self.overlap >= self.window:
            raise ValueError(f"overlap {self.overlap} must be below window {self.window} (consecutive windows share "
                             "overlap steps); lower the overlap or raise the window")


def require_heads(config: ModelConfig, name: str) -> None:
    """Raise ``ValueError`` unless the model has the camera, depth and point heads a reconstruction needs."""
    missing = [head for head in ("camera_head", "depth_head", "point_head") if getattr(config, head) is None]
    if missing:
        raise ValueError(
            f"model {name}: a reconstruction needs the camera, depth and point heads, and this model has no "
            f"{', '.join(missing)} (a Pi3-initialised backbone has none); use a model with heads"
        )


def min_patches(config: ModelConfig) -> int:
    """Patches per frame the model needs (its sparse strategy may need more than one, e.g. one per landmark)."""
    sparse = config.aggregator.sparse_global
    return 1 if sparse is None else STRATEGIES[sparse.strategy].min_patches(sparse)


def check_input_size(config: ModelConfig, sizes: list[tuple[int, int]], mode: PreprocessMode, size: int) -> None:
    """Raise ``ValueError`` unless views of ``sizes`` (H0, W0 each) pre-processed at ``size`` fit the model:
    at most ``MAX_SIZE_FACTOR`` × its trained width, and enough patches per frame for its mechanisms."""
    if size <= 0 or size % config.patch_size:
        raise ValueError(f"size {size} must be a positive multiple of {config.patch_size} (e.g. {config.input_width})")
    limit = MAX_SIZE_FACTOR * config.input_width
    if size > limit:
        raise ValueError(f"size {size} is more than this model takes: at most {limit} ({MAX_SIZE_FACTOR}× the "
                         f"{config.input_width} px it was trained at, where it is most accurate); lower size")
    p, need = config.patch_size, min_patches(config)

    def grid(target: int) -> tuple[int, int]:
        return plan_transforms(sizes, mode, target)[0].output_size

    def patches(target: int) -> int:
        height, width = grid(target)
        return (height // p) * (width // p)

    if patches(size) < need:
        smallest = next((s for s in range(size, limit + 1, p) if patches(s) >= need), None)
        height, width = grid(size)
        fix = f"use size {smallest} or more" if smallest else "crop the images to a less extreme aspect ratio"
        sparse = config.aggregator.sparse_global
        why = f"its {sparse.strategy} sparse block needs them" if need > 1 else "at least one"
        raise ValueError(f"size {size} gives {width // p}×{height // p} patches per image, fewer than the {need} "
                         f"this model needs ({why}); {fix}")


def _predict(
    model: Page4D, clip: MultiViewClip, times: range, mode: PreprocessMode, size: int,
    calibration: Calibration | None, attention: AttentionPlan, shard: GridShard | None = None,
) -> Prediction:
    """One forward pass over ``times`` under the ``attention`` plan (its grid spread over the processes of
    ``shard``): numpy ``[T', V, ...]`` outputs and uint8 images. A calibration with poses reaches a model with the
    epipolar prior as its ``camera_priors``."""
    images, transforms = clip.load_images(mode=mode, target_size=size, times=times)
    masks = None if clip.external_mask_paths is None else clip.load_external_masks(transforms, times)[None]
    priors = None
    if calibration is not None and calibration.has_poses and model.config.aggregator.epipolar is not None:
        intrinsics = model_intrinsics(calibration, transforms, len(times))
        extrinsics = calibration.poses([clip.time_ids[t] for t in times])
        priors = tuple(torch.from_numpy(np.ascontiguousarray(x)).float()[None] for x in (intrinsics, extrinsics))
    inputs = None if masks is None and priors is None else ForwardInputs(external_mask=masks, camera_priors=priors)
    sharded = {} if shard is None else {"shard": shard}  # a stand-in model need not know sharding to run alone
    pred = model.infer(images[None], inputs, attention=attention.name, **sharded)
    out = {
        "extrinsic": pred.extrinsic[0], "intrinsic": pred.intrinsic[0], "depth": pred.depth[0, ..., 0],
        "depth_conf": pred.depth_conf[0], "world_points": pred.world_points[0],
        "world_points_conf": pred.world_points_conf[0], "dynamic_mask": pred.dynamic_mask,
    }
    if out["dynamic_mask"] is not None:
        out["dynamic_mask"] = out["dynamic_mask"][0]
    arrays = {k: v.float().cpu().numpy() for k, v in out.items() if v is not None}
    pixels = (images.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8).numpy()
    return arrays, pixels


def load_model(
    name: str | Path, clip: MultiViewClip, mode: PreprocessMode, size: int | None, seed: int = 0
) -> tuple[Page4D, LoadReport]:
    """The model ``name`` (anything ``load_pretrained`` reads, or a preset with random weights from ``seed``),
    checked against the clip; a preset's config is checked before its possibly full-size model is built."""
    if isinstance(name, str) and name in PRESETS:
        _check_model(preset(name), clip, mode, size, name)
    model, report = load_pretrained(name, presets=True, seed=seed)
    _check_model(model.config, clip, mode, size, str(name))
    return model, report


def _check_model(config: ModelConfig, clip: MultiViewClip, mode: PreprocessMode, size: int | None, name: str) -> None:
    require_heads(config, name)
    check_input_size(config, clip.image_sizes, mode, config.input_width if size is None else size)
    mask = config.aggregator.dynamic_mask
    if clip.external_mask_paths is not None and (mask is None or mask.head != "fusion"):
        raise ValueError(f"the clip has external masks, and the model {name} has no fusion mask head to take them; "
                         "use a model with one (e.g. page4d-small, page4d-mv) or open the clip without masks (CLI: "
                         "drop --masks)")


def reconstruct(
    model: Page4D | str | Path,
    clip: MultiViewClip,
    mode: PreprocessMode = "crop",
    size: int | None = None,
    plan: WindowPlan | None = None,
    progress: bool = True,
    spool: Path | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    rig: RigMode = "auto",
    calibration: Calibration | str | Path | None = None,
    attention: str = "auto",
    refine: str = "none",
    refine_options: RefineOptions | None = None,
    shard: str = "auto",
    processes: Processes | None = None,
) -> Reconstruction | None:
    """Predict every (t, v) of ``clip``; window by window when ``plan`` cuts the clip (module docstring of
    ``page4d.reconstruction.windows``). The world frame is the predicted camera (t0, v0).

    Args:
        model: a ``Page4D``, or a name for ``load_pretrained`` (bundled model, folder, checkpoint file, Hub id) or
            a preset (random weights from ``seed``: the result is marked untrained).
        size: model-input width (crop) or longer side (pad); default: the width the model was trained at.
        plan: how the clip is cut in time (default: one pass over all of it).
        spool: a folder on the disk the dense outputs are written to as they are made; the result reads them
            back from there and removes them when it is closed (``Reconstruction.close``, or ``with``).
        device: where a named model runs (default: a ``Page4D``'s own device, else the CPU).
        log: called with one line for each note (the model's source, the window chosen, the rig decided).
        rig: ``static`` (one pose per camera for the whole clip; windows register through the cameras),
            ``moving`` (a pose per step; windows register on their shared steps) or ``auto`` (from the calibration,
            else from the spread of the first window's cameras); ``page4d.reconstruction.registration``.
        calibration: the rig's cameras (a :class:`Calibration`, or a path ``read_calibration`` reads): K replaces
            the predicted K, distortion is removed from the frames, and poses put every frame in the
            calibration's world and units (``page4d.reconstruction.calibrated``).
        attention: how the frames of a window attend (``page4d.attention_plans``): ``set``, ``per-step``,
            ``factorised``, or ``auto``, the layout the weights were trained in. ``per-step`` runs each time step
            on its own and registers the steps through the rig's cameras (a static rig of two or more cameras, or
            calibrated poses); its windows need no overlap.
        refine: ``ba`` adjusts the cameras on multi-view feature tracks (pycolmap bundle adjustment) and moves
            depth and points with them (``page4d.refine``); a calibration's poses stay fixed. Where it cannot
            run (too few tracks, one view) the note says why and the result is kept unrefined.
        refine_options: what the refinement may change (``RefineOptions``: focal lengths, calibrated poses, ...).
        shard: how ``processes`` share the work (``page4d.reconstruction.scaleout``): ``windows`` (whole windows
            per process), ``grid`` (each window's frames spread over all of them) or ``auto`` (grid when one
            window covers the clip).
        processes: the processes of a torchrun launch that run this together (``page4d.distributed.join``), each
            calling ``reconstruct`` with the same arguments; only rank 0 returns the reconstruction, the others
            None, and rank 0's ``spool`` (or a temporary folder) carries the other processes' windows to it.
            Default: this process alone.

    The result's ``meta`` records the provenance: page4d version, model and weights source, ``untrained``, the
    config, device, pre-processing, the attention plan, windows, seconds, the rig decided, the output world, and
    with a calibration the model's error against it per camera.
    """
    _check_types(model, clip, plan)
    if refine not in REFINE_MODES:
        raise ValueError(f"refine {refine!r}: choose one of {', '.join(REFINE_MODES)}")
    if refine_options is not None and refine != "ba":
        raise ValueError(f"refine_options say what refine='ba' adjusts, and refine is {refine!r}; pass refine='ba' "
                         "or drop refine_options")
    resolve_shard(shard, Processes(), 1)  # the name, checked before anything is loaded
    if refine == "ba" and importlib.util.find_spec("pycolmap") is None:
        raise ValueError("refine ba needs pycolmap (feature tracks and bundle adjustment): pip install "
                         "\"page4d[export]\"")
    note = log or (lambda _: None)
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = Calibration.for_clip(calibration, clip)
    check_rig(rig, calibrated_kind(calibration))
    _check_attention(attention, rig, calibration, clip)
    plan = plan or WindowPlan()
    if attention != "per-step":
        _check_overlap(plan, rig, calibration, clip)
    if calibration is not None:
        note(f"calibration: {calibration.source}: {calibration.match}" + (
            "" if calibration.has_poses else " (intrinsics only)"))
        clip = calibration.applied_to(clip)
        if clip.lenses is not None:
            lensed = [name for name, lens in zip(clip.view_names, clip.lenses, strict=True) if lens is not None]
            note(f"calibration: lens distortion removed from the frames of {', '.join(lensed)}")
    name, report = "Page4D object", None
    if isinstance(model, (str, Path)):
        name = str(model)
        model, report = load_model(model, clip, mode, size, seed)
        note(f"model: {_describe(report)}")
    else:
        _check_model(model.config, clip, mode, size, "given")
    if device is not None:
        model.to(device)
    run_device = next(model.parameters()).device
    chosen = resolve_plan(attention, model.config)
    note(f"attention: {chosen.name} (" + (f"auto: the weights were trained in the {model.config.trained_layout} "
                                          "layout)" if attention == "auto" else "as asked)"))
    size = model.config.input_width if size is None else size
    transforms = clip.transforms(mode, size)
    padded = batch_padded(transforms, mode)
    if padded:
        height, width = transforms[0].output_size
        note(f"note: {', '.join(clip.view_names[v] for v in padded)} (another aspect ratio) padded with white to "
             f"{width}×{height}; each view's outputs are mapped back to its own resolution")
    processes = processes or Processes()
    # An explicit grid spreads each window's activations over the processes, so an automatic window can be longer.
    spread = processes.world if shard == "grid" else 1
    window = processes.share(_window_steps(plan, model, chosen, clip, transforms[0].output_size, run_device, note,
                                           spread))
    start = time.perf_counter()
    if chosen.name == "per-step":  # steps stand alone: windows share none and the last one is cut short
        windows = plan_windows(clip.num_times, window, 0, equal=False)
    else:
        windows = plan_windows(clip.num_times, window, min(plan.overlap, window - 1))
    split = resolve_shard(shard, processes, len(windows))
    predict = partial(_predict, model, clip, mode=mode, size=size, calibration=calibration, attention=chosen,
                      shard=GridShard() if split == "grid" else None)
    if split is not None:
        note(f"processes: {processes.world}, sharing {'each window' if split == 'grid' else 'the windows'}")
    if split is None and shard != "auto":
        note(f"note: shard {shard} does nothing in one process; launch with torchrun --nproc_per_node=N")
    if split == "windows" and len(windows) < processes.world:
        note(f"note: {processes.world - len(windows)} of the {processes.world} processes have no window to run (the "
             f"clip makes {len(windows)}); shard grid spreads each window over all of them")
    handed = share_windows(split, processes, predict, windows, spool, progress)
    if not processes.leader:
        return None
    store = Spool(spool) if spool is not None else None
    with store.removed_on_error() if store is not None else contextlib.nullcontext():
        source = (lambda _, times: predict(times)) if handed is None else (lambda index, _: handed.read(index))
        try:
            recon = stitch(source, clip, transforms, mode, size, windows, progress, store, rig, calibration, chosen)
        finally:
            if handed is not None:
                shutil.rmtree(handed.folder, ignore_errors=True)
        if refine == "ba":
            recon.meta["refine"] = _refined(recon, clip, calibration, refine_options or RefineOptions(), note)
    note(f"rig: {recon.meta['rig']['mode']} ({recon.meta['rig']['reason']})")
    recon.meta.update({
        "page4d_version": __version__,
        "model": name,
        "weights": None if report is None else _describe(report),
        "untrained": None if report is None else report.untrained,
        "config": model.config.to_dict(),
        "attention": chosen.name, "processes": {"count": processes.world, "shard": split},
        "device": str(run_device), "seconds": round(time.perf_counter() - start, 3),
        "external_masks": None if clip.external_mask_paths is None else True,
    })
    return recon


def _check_overlap(plan: WindowPlan, rig: RigMode, calibration: Calibration | None, clip: MultiViewClip) -> None:
    """``ValueError`` for an overlap of 0 where windows can only register on shared steps."""
    if plan.overlap > 0 or calibration is not None and calibration.has_poses:
        return
    if rig != "static" or clip.num_views < 2:
        raise ValueError("overlap 0 leaves consecutive windows nothing to register on: it needs calibrated poses "
                         "or a static rig of two or more cameras (--rig static); give an overlap of 1 or more")


def _refined(recon: Reconstruction, clip: MultiViewClip, calibration: Calibration | None, options: RefineOptions,
             note: Callable[[str], None]) -> dict:
    """Run the bundle adjustment on ``recon`` (in place); its report, or why it was skipped."""
    from page4d.refine.pipeline import RefinementError, refine_reconstruction

    try:
        calibrated = calibration is not None and calibration.has_poses
        report = refine_reconstruction(recon, clip, static=recon.meta["rig"]["mode"] == "static",
                                       fixed_poses=calibrated and not options.refine_calibrated, options=options)
    except RefinementError as err:
        note(f"refine: skipped, the result is not refined: {err}")
        return {"status": "skipped", "reason": str(err)}
    error = report["reprojection_error_px"]
    fallback = report.get("fallback")
    if fallback is not None and "failed" in fallback:
        note(f"refine: {fallback['reason']}; the fallback to pycolmap's mapper failed ({fallback['failed']}), so "
             "the guided adjustment is kept")
    elif fallback is not None:
        agree = fallback["agreeing_observations"]
        note(f"refine: {fallback['reason']}; pycolmap's mapper registered {fallback['registered_images']} of "
             f"{fallback['images']} images in {fallback['models']} model(s), and the {report['method']} result is "
             f"kept (exhaustive matches it explains: {', '.join(f'{k} {n}' for k, n in agree.items())})")
    note(f"refine: {report['points']} points on tracks of mean length {report['mean_track_length']:.2f}, "
         f"reprojection error {error['before']:.2f} -> {error['after']:.2f} px, {report['rejected_observations']} "
         f"outlier observations removed, in {report['seconds']:.1f} s")
    return report


def _check_attention(attention: str, rig: RigMode, calibration: Calibration | None, clip: MultiViewClip) -> None:
    """``ValueError`` for an unknown plan, or a ``per-step`` run whose steps nothing could register."""
    if attention not in ATTENTION_PLANS:
        raise ValueError(f"attention {attention!r}: choose one of {', '.join(ATTENTION_PLANS)}")
    if attention != "per-step":
        return
    why = "attention per-step reconstructs each time step on its own, in its own frame and scale; "
    if clip.num_views < 2:
        raise ValueError(why + "with one camera nothing ties the steps together, not even a calibration (one "
                         "camera gives no scale); use --attention set (or auto)")
    if rig == "moving" and (calibration is None or not calibration.has_poses):
        raise ValueError(why + "a moving rig's steps can only be put in one world by calibrated poses: give "
                         "--cameras with a pose per time step, or use --attention set (or auto)")


def _check_types(model: object, clip: object, plan: object) -> None:
    """``TypeError`` for a ``model``, ``clip`` or ``plan`` of the wrong kind, before anything is loaded."""
    if not isinstance(clip, MultiViewClip):
        raise TypeError(f"clip must be a MultiViewClip (page4d.open_input(paths)[0] opens one), got "
                        f"{type(clip).__name__}")
    if plan is not None and not isinstance(plan, WindowPlan):
        raise TypeError(f"plan must be a page4d.WindowPlan (e.g. WindowPlan(window=16, overlap=2)), got {plan!r}")
    if not isinstance(model, (str, Path)) and not (hasattr(model, "infer") and hasattr(model, "config")):
        raise TypeError(f"model must be a Page4D (or a stand-in with its config and infer) or a model name or path, "
                        f"got {type(model).__name__}")


def _window_steps(plan: WindowPlan, model: Page4D, attention: AttentionPlan, clip: MultiViewClip,
                  image_size: tuple[int, int], device: torch.device, note: Callable[[str], None],
                  processes: int = 1) -> int:
    """Time steps per forward pass: the plan's number, the whole clip (``all``) or what fits (``auto``,
    ``page4d.reconstruction.budget``; each window's tokens spread over ``processes``)."""
    if plan.window == "all":
        return clip.num_times
    if plan.window != "auto":
        return plan.window
    choice = choose_window(model.config, len(model.required_entries()), attention, clip.num_times,
                           clip.num_views, image_size, device, processes)
    window = choice.steps
    if window < clip.num_times:
        note(f"window: {window} steps ({choice.reason})")
    if attention.name != "per-step" and plan.overlap >= window < clip.num_times:
        note(f"note: the automatic window of {window} steps is not above the overlap {plan.overlap}; windows "
             f"share {window - 1} steps")
    return window


def _describe(report: LoadReport) -> str:
    """One line on where the weights came from."""
    if report.untrained:
        return f"{report.source} with random weights: UNTRAINED, outputs are noise"
    return f"{report.source} ({len(report.mapped)} tensors loaded by the {report.converter} converter)"
