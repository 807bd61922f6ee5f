"""``page4d reconstruct INPUT... -o OUT``: run the model over a multi-view clip and write a reconstruction."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from page4d.attention_plans import ATTENTION_PLANS
from page4d.checkpoints.pretrained import DEFAULT_MODEL, resolve
from page4d.cli.summary import file_span
from page4d.data.clip import MultiViewClip
from page4d.data.sources import TimeSelection, open_input
from page4d.data.sync import SYNC_MODES
from page4d.devices import peak_memory_mb, resolve_device
from page4d.distributed.processes import Processes, join
from page4d.presets import PRESETS
from page4d.reconstruction.calibrated import Calibration, check_lines
from page4d.reconstruction.record import Reconstruction
from page4d.reconstruction.registration import RIG_MODES
from page4d.reconstruction.runner import WindowPlan, reconstruct
from page4d.reconstruction.scaleout import SHARD_MODES
from page4d.refine.modes import REFINE_MODES, RefineOptions
from page4d.transaction import OutputFolder

DEFAULT_EXPORTS = "ply,glb,colmap,png"


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "reconstruct",
        help="predict cameras, depth, points and dynamic masks for every (time, view) of a clip",
        description=(
            "Run the model over a multi-view clip and write predictions.npz ([T, V, ...] arrays), meta.json, "
            "cameras.json and the chosen exports (PLY point clouds, a GLB scene, a COLMAP model, PNG panels, a "
            "nerfstudio dataset, a rerun recording) to OUT."
        ),
    )
    p.add_argument(
        "input", type=Path, nargs="+",
        help="a clip folder (images/time_XX/viewN.png), one video per camera (or a folder of them), or one image "
        "folder / .txt list per camera",
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
    time_group.add_argument(
        "--sync", choices=SYNC_MODES, default="timestamp",
        help="videos: pair frames into time steps by presentation timestamp (default; cameras at different frame "
        "rates or start times line up on the slowest camera's frames) or by index (frame i of every file)")
    p.add_argument("--masks", type=Path,
                   help="external moving masks MASKS/time_XX/viewN.png (non-zero = moving) for models with a fusion "
                   "mask head (the default model has one)")
    rig_group = p.add_argument_group("camera rig")
    rig_group.add_argument(
        "--cameras", type=Path, metavar="FILE_OR_DIR",
        help="the rig's calibration: an anipose / Pose2Sim .toml, a COLMAP model folder (text or binary) or a page4d "
        "cameras.json (or a folder with one); matched to the views by name, else by order. K replaces the "
        "predicted K, lens distortion is removed from the frames (needs page4d[rig]), and poses put the output in "
        "the calibration's world and units; the run prints how far the model's cameras were from it",
    )
    rig_group.add_argument(
        "--rig", choices=RIG_MODES, default="auto",
        help="static: one pose per camera for the whole clip (windows register through the cameras, --overlap 0 "
        "allowed); moving: a pose per time step; auto: from the calibration, else from how much the first window's "
        "cameras move (default: auto)",
    )
    p.add_argument(
        "--attention", choices=ATTENTION_PLANS, default="auto",
        help="how the frames of a window attend: set (all T·V frames as one set, as VGGT / PAGE-4D / Pi3 were "
        "trained; cost quadratic in T·V), per-step (each time step's V views on their own, registered through a "
        "static rig or calibrated poses; linear in T), factorised (time and view attention, as page4d-small was "
        "trained), or auto: the layout the weights record (default: auto)",
    )
    p.add_argument(
        "--refine", choices=REFINE_MODES, default="none",
        help="ba: adjust the cameras on multi-view SIFT tracks (pycolmap bundle adjustment; a calibration's poses "
        "stay fixed) and move depth and points with them; the COLMAP export then carries the tracks (default: "
        "none)",
    )
    p.add_argument("--refine-focal", action="store_true",
                   help="with --refine ba: adjust each camera's focal length too (one per camera over the clip)")
    p.add_argument("--refine-calibrated", action="store_true",
                   help="with --refine ba and --cameras poses: let the adjustment move the calibrated poses too "
                   "(by default they stay exactly as calibrated)")
    p.add_argument("--mode", choices=("crop", "pad"), default="crop", help="VGGT pre-processing mode (default: crop)")
    p.add_argument("--size", type=int,
                   help="target width (crop) or longer side (pad), multiple of 14 (default: the width the model was "
                   "trained at: 168 for page4d-small, 518 for VGGT-size models)")
    p.add_argument("--window", default=str(WindowPlan.window),
                   help="time steps per forward pass; 'auto' fits half the free memory, 'all' = one pass (default: "
                   f"{WindowPlan.window})")
    p.add_argument("--overlap", type=int,
                   help="time steps shared by consecutive windows, below --window; 0 only for a static rig of "
                   f"several cameras or calibrated poses; unused by --attention per-step (default: "
                   f"{WindowPlan.overlap}, or one below a shorter --window)")
    p.add_argument(
        "--shard", choices=SHARD_MODES, default="auto",
        help="under torchrun --nproc_per_node=N: windows (each process runs whole windows; rank 0 stitches them), "
        "grid (every window's time steps and cameras are spread over all processes: memory per process about 1/N; "
        "exact, with all-to-all exchanges between time and view blocks), or auto: grid when one window covers the "
        "clip, else windows (default: auto). Rank 0 writes the output",
    )
    p.add_argument("--export", default=DEFAULT_EXPORTS,
                   help="comma-separated subset of ply, glb, colmap, png, nerfstudio (transforms.json, images, masks "
                   "and static points for nerfstudio / gsplat), rerun (recording.rrd: every step's cameras, images, "
                   "depth, masks and points for the rerun viewer; needs page4d[rerun]), or 'none' (default: "
                   f"{DEFAULT_EXPORTS})")
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


def _plan(value: str, overlap: int | None) -> WindowPlan:
    """``--window`` and ``--overlap`` as the library's window plan (which checks them); without ``--overlap``, the
    default, or one step below a window shorter than it."""
    if value not in ("auto", "all") and not value.isdigit():
        raise ValueError(f"--window {value}: give 'auto', 'all' or a number of time steps >= 2")
    window = int(value) if value.isdigit() else value
    if overlap is None:
        overlap = min(WindowPlan.overlap, window - 1) if isinstance(window, int) and window >= 1 else WindowPlan.overlap
    return WindowPlan(window, overlap)


def _inputs(args: argparse.Namespace) -> list[Path]:
    """Every file or folder the run reads, which ``-o`` must not overlap."""
    paths = [*args.input, *(p for p in (args.masks, args.cameras) if p is not None)]
    weights = None if args.model in PRESETS else resolve(args.model)  # a bundled folder, a local path or a Hub name
    return paths + ([weights] if isinstance(weights, Path) else [])


def _write(recon: Reconstruction, folder: Path, args: argparse.Namespace, formats: list[str],
           clip: MultiViewClip) -> list[Path]:
    """Save ``recon`` with the command's own provenance and the requested exports into ``folder``; returns the
    files."""
    recon.meta.update({"input": [str(p) for p in args.input],
                       "external_masks": None if args.masks is None else str(args.masks)})
    files = recon.save(folder)
    if formats:
        from page4d.export import export

        export_time = clip.time_ids.index(args.export_time) if args.export_time is not None else clip.num_times // 2
        files += export(recon, folder, formats, time_index=export_time, conf_percentile=args.conf_percentile,
                        progress=not args.quiet, frames=clip.load_original)
    return files


def open_lines(out: Path, names: list[Path]) -> list[str]:
    """One summary line per export found in ``names`` (the files written, relative to ``out``, in the order
    written) naming what to open: the panels, point clouds, scene, COLMAP project, nerfstudio dataset and rerun
    recording."""
    found = {
        "PNG panels": [n for n in names if n.parts[0] == "panels"],
        "point clouds": [n for n in names if n.parts[0] == "points"],
        "GLB scene": [n for n in names if n.suffix == ".glb"],
        "COLMAP project": sorted({Path(*n.parts[:2]) for n in names if n.parts[0] == "colmap"}),
        "nerfstudio / gsplat dataset": [n for n in names if n.parts == ("nerfstudio", "transforms.json")],
        "rerun recording (open with: rerun FILE)": [n for n in names if n.suffix == ".rrd"],
    }
    return [f"{label}: {file_span(out, paths)}" for label, paths in found.items() if paths]


def run(args: argparse.Namespace) -> int:
    if args.size is not None and (args.size <= 0 or args.size % 14):
        raise ValueError(f"--size {args.size} must be a positive multiple of 14 (e.g. 518)")
    plan = _plan(args.window, args.overlap)
    if args.refine == "none" and (args.refine_focal or args.refine_calibrated):
        flag = "--refine-focal" if args.refine_focal else "--refine-calibrated"
        raise ValueError(f"{flag} changes what --refine ba adjusts; add --refine ba, or drop {flag}")
    formats = _exports(args.export)
    select = TimeSelection(start=args.start, frames=args.frames, every=args.every, fps=args.fps, sync=args.sync)
    device = resolve_device(args.device)
    processes = join(device)  # under torchrun; rank 0 owns the output, the others only compute
    try:
        if not processes.leader:
            _run(args, None, plan, formats, select, device, processes)
            return 0
        with OutputFolder(args.output, overwrite=args.overwrite, inputs=_inputs(args)) as output:
            summary = _run(args, output, plan, formats, select, device, processes)
    finally:
        processes.close()
    if not args.quiet:  # only once the result is in place
        print("\n".join(summary))
    return 0


def _run(args: argparse.Namespace, output: OutputFolder | None, plan: WindowPlan, formats: list[str],
         select: TimeSelection, device: torch.device, processes: Processes) -> list[str]:
    """Everything after the output is claimed (by rank 0: ``output``): inputs checked, model loaded, reconstruction
    written aside. Returns the summary lines (rank 0)."""
    log = (lambda *_: None) if args.quiet or not processes.leader else print
    for note in [] if output is None else output.notes:
        log(f"note: {note}")
    clip, notes = open_input(args.input, select, masks=args.masks)
    if args.export_time is not None and args.export_time not in clip.time_ids:
        raise ValueError(f"--export-time {args.export_time} is not a time id of the input "
                         f"({clip.time_ids[0]}..{clip.time_ids[-1]}); pick one of them")
    calibration = None if args.cameras is None else Calibration.for_clip(args.cameras, clip)
    sizes = sorted(set(clip.image_sizes), key=clip.image_sizes.index)
    log(f"input: {clip.root} — T={clip.num_times} time steps × V={clip.num_views} views, "
        f"{', '.join(f'{w}×{h}' for h, w in sizes)} px" + ("" if clip.external_mask_paths is None else ", +masks"))
    for note in notes:
        log(f"note: {note}")
    tmp = None if output is None else output.path
    # Dense outputs go to disk window by window (a spool on the output's disk), so memory does not grow with the
    # clip's length; the spool goes when the record is closed, before the output is swapped into place.
    started = time.perf_counter()
    recon = reconstruct(args.model, clip, mode=args.mode, size=args.size, plan=plan,
                        progress=not args.quiet and processes.leader, spool=tmp, device=device, seed=args.seed,
                        log=log, rig=args.rig, calibration=calibration, attention=args.attention, refine=args.refine,
                        refine_options=None if args.refine == "none" else RefineOptions(
                            refine_focal=args.refine_focal, refine_calibrated=args.refine_calibrated),
                        shard=args.shard, processes=processes)
    if recon is None:  # another process's share is done; rank 0 writes
        processes.collect((peak_memory_mb(device), time.perf_counter() - started))
        return []
    with recon:
        seen = clip if calibration is None else calibration.applied_to(clip)  # the frames as the model saw them
        files = _write(recon, tmp, args, formats, seen)
    ranks = processes.collect((peak_memory_mb(device), time.perf_counter() - started))
    written = [p.relative_to(tmp) for p in files]
    names = sorted({p.parts[0] + ("/" if len(p.parts) > 1 else "") for p in written})
    total_mb = sum(p.stat().st_size for p in files) / 2**20
    height, width = recon.size
    windows = recon.meta["windows"]
    summary = [
        f"done: {recon.num_times * recon.num_views} frames ({recon.num_times}×{recon.num_views}) at {width}×{height} "
        f"in {recon.meta['seconds']:.1f} s on {device}, {len(windows)} window(s) of "
        f"{max(stop - start for start, stop in windows)} steps, attention {recon.meta['attention']}; peak memory "
        f"{peak_memory_mb(device):.0f} MB",
        f"wrote {args.output}: {', '.join(names)} ({len(files)} files, {total_mb:.0f} MB)",
        *open_lines(args.output, written),
    ]
    if processes.world > 1:
        per_rank = ", ".join(f"rank {r} {mb:.0f} MB {s:.1f} s" for r, (mb, s) in enumerate(ranks))
        summary.append(f"processes: {processes.world}, shard {recon.meta['processes']['shard']}; peak memory and time "
                       f"per rank: {per_rank}")
    if calibration is not None:
        world = "calibration" if calibration.has_poses else "model"
        summary += [f"the model's cameras against the calibration (median over time steps; rotation in degrees, "
                    f"centre distance in calibration units; the output is in the {world}'s world and units):",
                    *check_lines(recon.meta["calibration"]["check"])]
    refined = recon.meta.get("refine")
    if refined is not None and refined["status"] == "refined":
        error = refined["reprojection_error_px"]
        moved = ", ".join(f"{name} {c['rotation_deg']:.2f}°" for name, c in refined["cameras_moved"].items())
        summary.append(f"refined: {refined['points']} points, mean track length {refined['mean_track_length']:.2f}, "
                       f"reprojection error {error['before']:.2f} -> {error['after']:.2f} px; cameras moved {moved}")
    if recon.untrained:
        summary.append("note: the weights are random (untrained); the numbers show the pipeline works, not a "
                       "reconstruction")
    return summary
