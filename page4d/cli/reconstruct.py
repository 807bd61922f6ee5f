"""``page4d reconstruct INPUT... -o OUT``: run the model over a multi-view clip and write a reconstruction."""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

from page4d import __version__
from page4d.config import PRESETS, ModelConfig, preset
from page4d.data.clip import MultiViewClip
from page4d.data.preprocess import model_input_size
from page4d.data.sources import TimeSelection, open_input
from page4d.devices import resolve_device
from page4d.model import Page4D
from page4d.reconstruction.record import Reconstruction
from page4d.reconstruction.runner import WindowPlan, check_input_size, choose_window, reconstruct
from page4d.transaction import OutputFolder

DEFAULT_MODEL = "page4d-small"
DEFAULT_EXPORTS = "ply,glb,colmap,png"
SPOOL = ".spool"


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "reconstruct",
        help="predict cameras, depth, points and dynamic masks for every (time, view) of a clip",
        description=(
            "Run the model over a multi-view clip and write predictions.npz ([T, V, ...] arrays), meta.json, "
            "cameras.json and the chosen exports (PLY point clouds, a GLB scene, a COLMAP model, PNG panels) to OUT."
        ),
    )
    p.add_argument(
        "input", type=Path, nargs="+",
        help="a clip folder (images/time_XX/viewN.png), one video per camera, or one image folder / .txt list "
        "per camera",
    )
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output folder (created; must be empty; never an input, inside one or above one)")
    p.add_argument(
        "--model", default=DEFAULT_MODEL,
        help="page4d-small (the trained model shipped with page4d; see its model card), a preset name "
        f"({', '.join(sorted(PRESETS))}: random, UNTRAINED weights), a page4d checkpoint folder, a checkpoint file "
        f"(.safetensors/.pt, page4d or VGGT), or a Hub id such as facebook/VGGT-1B (default: {DEFAULT_MODEL})",
    )
    time_group = p.add_argument_group("time steps")
    time_group.add_argument("--fps", type=float, help="videos: keep about this many frames per second")
    time_group.add_argument("--every", type=int, default=1, help="keep every N-th time step (default: 1)")
    time_group.add_argument("--start", type=int, default=0, help="skip this many time steps (after --fps/--every)")
    time_group.add_argument("--frames", type=int, help="use at most this many time steps")
    p.add_argument("--masks", type=Path,
                   help="external moving masks MASKS/time_XX/viewN.png (non-zero = moving) for models with a seeds "
                   "mask head (the default model has one)")
    p.add_argument("--mode", choices=("crop", "pad"), default="crop", help="VGGT pre-processing mode (default: crop)")
    p.add_argument("--size", type=int,
                   help="target width (crop) or longer side (pad), multiple of 14 (default: the width the model was "
                   "trained at: 168 for page4d-small, 518 for VGGT-size models)")
    p.add_argument("--window", default="auto",
                   help="time steps per forward pass; 'auto' fits half the free memory (default), 'all' = one pass")
    p.add_argument("--overlap", type=int, default=2,
                   help="time steps shared by consecutive windows, at least 1 and below --window (default: 2)")
    p.add_argument("--export", default=DEFAULT_EXPORTS,
                   help=f"comma-separated subset of ply, glb, colmap, png, or 'none' (default: {DEFAULT_EXPORTS})")
    p.add_argument("--export-time", type=int,
                   help="time id of the GLB scene and the COLMAP model (default: the middle time step)")
    p.add_argument("--conf-percentile", type=float, default=20.0,
                   help="exports drop points below this percentile of each time step's confidence (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights of a preset (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it exists and is not empty (the old result stays whole until the new one "
                   "replaces it)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress bars)")
    p.set_defaults(run=run)


def load_model(name: str, seed: int) -> tuple[Page4D, str]:
    """The model and a one-line description of where its weights came from."""
    if name in PRESETS:
        torch.manual_seed(seed)
        return Page4D(preset(name)), f"preset {name!r} with random weights (seed {seed}): UNTRAINED, outputs are noise"
    from page4d.checkpoints.pretrained import load_pretrained

    model, report = load_pretrained(name)
    return model, f"{name} ({len(report.mapped)} tensors loaded by the {report.converter} converter)"


def _require_heads(config: ModelConfig, name: str) -> None:
    missing = [head for head in ("camera_head", "depth_head", "point_head") if getattr(config, head) is None]
    if missing:
        raise ValueError(
            f"--model {name}: reconstruct needs the camera, depth and point heads, and this model has no "
            f"{', '.join(missing)} (a Pi3-initialised backbone has none); use a model with heads"
        )


def _exports(value: str) -> list[str]:
    """The ``--export`` formats, checked (known, libraries installed) before any work is done."""
    if value == "none":
        return []
    from page4d.export import FORMATS, check_formats

    names = [f.strip() for f in value.split(",") if f.strip()]
    if not names:
        raise ValueError(f"--export {value!r} names no format; give a comma-separated subset of {', '.join(FORMATS)}, "
                         "or none")
    try:
        return check_formats(names)
    except ValueError as err:
        raise ValueError(f"--export {value}: {err}, or pass --export none") from None


def _window(value: str, overlap: int) -> int | str:
    """``--window`` as a number of time steps, or ``auto`` / ``all``; checked against ``--overlap``."""
    if value not in ("auto", "all") and not (value.isdigit() and int(value) >= 2):
        raise ValueError(f"--window {value}: give 'auto', 'all' or a number of time steps >= 2")
    if overlap < 1:
        raise ValueError(f"--overlap {overlap} must be at least 1: consecutive windows are aligned on shared steps")
    if value.isdigit() and overlap >= int(value):
        raise ValueError(f"--overlap {overlap} must be below --window {value} (consecutive windows share --overlap "
                         "steps); lower --overlap or raise --window")
    return int(value) if value.isdigit() else value


def _inputs(args: argparse.Namespace) -> list[Path]:
    """Every file or folder the run reads, which ``-o`` must not overlap."""
    from page4d.checkpoints.pretrained import resolve

    paths = [*args.input, *([args.masks] if args.masks is not None else [])]
    weights = None if args.model in PRESETS else resolve(args.model)  # a bundled folder, a local path or a Hub name
    return paths + ([weights] if isinstance(weights, Path) else [])


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _write(recon: Reconstruction, folder: Path, args: argparse.Namespace, model: Page4D, source: str,
           device: torch.device, seconds: float, formats: list[str], clip: MultiViewClip) -> list[Path]:
    """Save ``recon`` with its provenance and the requested exports into ``folder``; returns the files."""
    recon.meta.update({
        "page4d_version": __version__, "model": args.model, "weights": source, "untrained": args.model in PRESETS,
        "config": model.config.to_dict(), "input": [str(p) for p in args.input], "device": str(device),
        "external_masks": None if args.masks is None else str(args.masks), "seconds": round(seconds, 3),
    })
    files = recon.save(folder)
    if formats:
        from page4d.export import export

        export_time = clip.time_ids.index(args.export_time) if args.export_time is not None else clip.num_times // 2
        files += export(recon, folder, formats, time_index=export_time, conf_percentile=args.conf_percentile,
                        progress=not args.quiet)
    return files


def run(args: argparse.Namespace) -> int:
    if args.size is not None and (args.size <= 0 or args.size % 14):
        raise ValueError(f"--size {args.size} must be a positive multiple of 14 (e.g. 518)")
    window = _window(args.window, args.overlap)
    formats = _exports(args.export)
    select = TimeSelection(start=args.start, frames=args.frames, every=args.every, fps=args.fps)
    with OutputFolder(args.output, overwrite=args.overwrite, inputs=_inputs(args)) as output:
        summary = _run(args, output, window, formats, select)
    if not args.quiet:  # only once the result is in place
        print("\n".join(summary))
    return 0


def _run(args: argparse.Namespace, output: OutputFolder, window: int | str, formats: list[str],
         select: TimeSelection) -> list[str]:
    """Everything after the output is claimed: inputs checked, model loaded, reconstruction written aside.
    Returns the summary lines."""
    log = (lambda *_: None) if args.quiet else print
    for note in output.notes:
        log(f"note: {note}")
    clip, notes = open_input(args.input, select, masks=args.masks)
    if args.export_time is not None and args.export_time not in clip.time_ids:
        raise ValueError(f"--export-time {args.export_time} is not a time id of the input "
                         f"({clip.time_ids[0]}..{clip.time_ids[-1]}); pick one of them")
    device = resolve_device(args.device)
    if args.model in PRESETS:  # checked before building a possibly full-size model
        config = preset(args.model)
        _require_heads(config, args.model)
        check_input_size(config, clip.image_size, args.mode, args.size or config.input_width)
    model, source = load_model(args.model, args.seed)
    _require_heads(model.config, args.model)
    size = args.size or model.config.input_width
    check_input_size(model.config, clip.image_size, args.mode, size)
    if clip.external_mask_paths is not None and (
        model.config.aggregator.dynamic_mask is None or model.config.aggregator.dynamic_mask.head != "seeds"
    ):
        raise ValueError(f"--masks: the model {args.model} has no seeds mask head to take external masks; use a "
                         f"model with one (e.g. {DEFAULT_MODEL}, page4d-mv) or drop --masks")
    model.to(device)
    log(f"model: {source}")
    log(f"input: {clip.root} — T={clip.num_times} time steps × V={clip.num_views} views, "
        f"{clip.image_size[1]}×{clip.image_size[0]} px" + ("" if clip.external_mask_paths is None else ", +masks"))
    for note in notes:
        log(f"note: {note}")

    start = time.perf_counter()
    if window == "auto":
        window = choose_window(model, clip, model_input_size(clip.image_size, args.mode, size), device)
        if args.overlap >= window < clip.num_times:
            log(f"note: the automatic window of {window} steps is not above --overlap {args.overlap}; windows share "
                f"{window - 1} steps")
    elif window == "all":
        window = clip.num_times
    plan = WindowPlan(window=window, overlap=min(args.overlap, window - 1))
    tmp = output.path
    # Dense outputs go to disk window by window, so memory does not grow with the clip's length.
    recon = reconstruct(model, clip, mode=args.mode, size=size, plan=plan, progress=not args.quiet,
                        spool=tmp / SPOOL)
    seconds = time.perf_counter() - start
    files = _write(recon, tmp, args, model, source, device, seconds, formats, clip)
    names = sorted({p.relative_to(tmp).parts[0] + ("/" if len(p.relative_to(tmp).parts) > 1 else "")
                    for p in files})
    total_mb = sum(p.stat().st_size for p in files) / 2**20
    shutil.rmtree(tmp / SPOOL)
    height, width = recon.size
    summary = [
        f"done: {recon.num_times * recon.num_views} frames ({recon.num_times}×{recon.num_views}) at {width}×{height} "
        f"in {seconds:.1f} s on {device}, {len(recon.meta['windows'])} window(s) of {plan.window} steps; "
        f"peak memory {_peak_memory_mb(device):.0f} MB",
        f"wrote {args.output}: {', '.join(names)} ({len(files)} files, {total_mb:.0f} MB)",
    ]
    if recon.untrained:
        summary.append("note: the weights are random (untrained); the numbers show the pipeline works, not a "
                       "reconstruction")
    return summary
