"""``page4d reconstruct CLIP -o OUT``: run the model over a multi-view clip and write its predictions."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from page4d import __version__
from page4d.cli.common import atomic_folder, check_output
from page4d.config import PRESETS, ModelConfig, preset
from page4d.data.layout import load_clip
from page4d.model import Page4D

DEFAULT_MODEL = "tiny"


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "reconstruct",
        help="predict cameras, depth and world points for every (time, view) of a clip",
        description=(
            "Run the model over a clip folder in the layout images/time_XX/viewN.png and write "
            "predictions.npz ([T, V, ...] arrays) and meta.json to OUT."
        ),
    )
    p.add_argument("input", type=Path, help="clip folder (images/time_XX/viewN.png, optional cameras.json)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (created; must be empty)")
    p.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"preset name ({', '.join(sorted(PRESETS))}: random, UNTRAINED weights), a page4d checkpoint "
        "folder, a checkpoint file (.safetensors/.pt, page4d or VGGT), or a Hub id such as facebook/VGGT-1B "
        f"(default: {DEFAULT_MODEL})",
    )
    p.add_argument("--mode", choices=("crop", "pad"), default="crop", help="VGGT pre-processing mode (default: crop)")
    p.add_argument("--size", type=int, default=518, help="target width (crop) or longer side (pad), multiple of 14")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights of a preset (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def run(args: argparse.Namespace) -> int:
    log = (lambda *_: None) if args.quiet else print
    check_output(args.output, args.overwrite)
    if args.size <= 0 or args.size % 14:
        raise ValueError(f"--size {args.size} must be a positive multiple of 14 (e.g. 518)")
    clip = load_clip(args.input)
    device = _device(args.device)
    if args.model in PRESETS:
        _require_heads(preset(args.model), args.model)  # before building a possibly full-size model
    model, source = load_model(args.model, args.seed)
    _require_heads(model.config, args.model)
    model.to(device)
    log(f"model: {source}")
    log(f"clip: {clip.root} — T={clip.num_times} time steps × V={clip.num_views} views, "
        f"{clip.image_size[1]}×{clip.image_size[0]} px")

    start = time.perf_counter()
    images, transforms = clip.load_images(mode=args.mode, target_size=args.size)
    pred = model.infer(images[None])
    seconds = time.perf_counter() - start
    height, width = images.shape[-2:]

    intrinsic = pred.intrinsic[0].cpu()
    original_k = torch.stack([
        torch.stack([transforms[t][v].restore_intrinsics(intrinsic[t, v]) for v in range(clip.num_views)])
        for t in range(clip.num_times)
    ])
    arrays = {
        "time_ids": np.asarray(clip.time_ids), "view_ids": np.asarray(clip.view_ids),
        "images": (images.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8).numpy(),
        "extrinsic": pred.extrinsic[0], "intrinsic": intrinsic, "intrinsic_original": original_k,
        "pose_enc": pred.pose_enc[0], "depth": pred.depth[0, ..., 0], "depth_conf": pred.depth_conf[0],
        "world_points": pred.world_points[0], "world_points_conf": pred.world_points_conf[0],
    }
    arrays = {k: (v.float().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in arrays.items()}
    meta = {
        "page4d_version": __version__, "model": args.model, "weights": source,
        "untrained": args.model in PRESETS, "config": model.config.to_dict(),
        "input": str(clip.root), "time_ids": clip.time_ids, "view_ids": clip.view_ids,
        "original_size": list(clip.image_size), "model_input_size": [height, width],
        "preprocess": {"mode": args.mode, "size": args.size}, "device": str(device),
        "seconds": round(seconds, 3),
        "conventions": "extrinsic: world-to-camera [R|t], OpenCV axes, world = camera (t0, v0); intrinsic: pixel K "
        "at model_input_size; intrinsic_original: K at original_size; depth: z-depth; arrays are [T, V, ...]",
    }
    with atomic_folder(args.output) as tmp:
        np.savez_compressed(tmp / "predictions.npz", **arrays)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    log(f"wrote {args.output}/predictions.npz and meta.json — {clip.num_times * clip.num_views} frames at "
        f"{width}×{height} in {seconds:.1f} s on {device}")
    if meta["untrained"]:
        log("note: the weights are random (untrained); the numbers show the pipeline works, not a reconstruction")
    return 0
