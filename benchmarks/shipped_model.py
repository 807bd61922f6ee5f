"""Scores of the shipped model (``page4d-small``) next to random weights of the same architecture.

Every score is a ``page4d eval`` metric (``page4d.eval.runner.evaluate``, video-depth protocol) of a
``page4d reconstruct`` run at the model's input width, on three sets:

- ``tabletop4v`` steps 00-11, which the fine-tuning saw, and steps 12-15, which it held out;
- held-out synthetic scenes (seeds from 2**31 on, which training never draws) of three kinds: the first model's
  training ranges (``ring-checker``), the rig families the current model trains on (``rigs-train``), and rig
  families no training run draws (``rigs-heldout``: wide baselines and domes), landscape and portrait.

    python benchmarks/shipped_model.py [--model page4d-small] [--previous FOLDER] [--scenes 8]
        [--tabletop ../shared/data/tabletop4v]

Prints one markdown table per set, with a column per model (``--previous``: an earlier model to compare with)
and random weights of the same architecture; the synthetic sets average their scenes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from page4d.data.layout import load_clip
from page4d.data.sources import TimeSelection, select_clip
from page4d.data.synthetic import scene_preset
from page4d.eval.runner import evaluate, report_value
from page4d.model import Page4D
from page4d.reconstruction.runner import reconstruct
from page4d.train.trainer import held_out_scenes

REPO = Path(__file__).resolve().parents[1]
SIZE = dict(num_times=3, num_views=4, height=126, width=168)
"""The sample size of the training configs (examples/train/small_mv_*.yaml)."""
SCENES = {
    "synthetic ring-checker": scene_preset("ring-checker", **SIZE),
    "synthetic rigs-train families": scene_preset("rigs-train", **SIZE),
    "synthetic rigs-heldout families": scene_preset("rigs-heldout", **SIZE),
    "synthetic rigs-heldout families, portrait": scene_preset("rigs-heldout-portrait", **SIZE),
}
"""The held-out synthetic sets (portrait: the same 126 × 168 frames stood upright)."""
METRICS = {
    "depth AbsRel (all)": ("depth", "median", "all", "abs_rel"),
    "depth AbsRel (static)": ("depth", "median", "static", "abs_rel"),
    "depth AbsRel (dynamic)": ("depth", "median", "dynamic", "abs_rel"),
    "depth δ<1.25": ("depth", "median", "all", "delta_1.25"),
    "camera ATE RMSE": ("cameras", "ate_rmse"),
    "pose AUC@30": ("cameras", "auc@30"),
    "dynamic mask IoU": ("dynamic_mask", "iou"),
    "dynamic mask F1": ("dynamic_mask", "f1"),
}


def scores(model: Page4D, clips: list) -> dict[str, float]:
    """Each metric averaged over ``clips``."""
    reports = [evaluate(clip, reconstruct(model, clip, size=model.config.input_width, progress=False))
               for clip in clips]
    values = {name: [report_value(r, path) for r in reports] for name, path in METRICS.items()}
    return {name: float(np.mean([np.nan if v is None else v for v in vs])) for name, vs in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="page4d-small")
    parser.add_argument("--previous", help="an earlier model (name or folder) to score alongside")
    parser.add_argument("--scenes", type=int, default=8, help="held-out scenes per synthetic set (default: 8)")
    parser.add_argument("--tabletop", type=Path, default=REPO.parent / "shared" / "data" / "tabletop4v")
    args = parser.parse_args()
    models = {args.model: Page4D.from_pretrained(args.model)}
    if args.previous:
        models[args.previous] = Page4D.from_pretrained(args.previous)
    torch.manual_seed(0)
    models["random weights"] = Page4D(models[args.model].config).eval()
    tabletop = load_clip(args.tabletop)
    sets = {
        "tabletop4v 00–11 (fine-tuned on)": [select_clip(tabletop, TimeSelection(frames=12))],
        "tabletop4v 12–15 (held out)": [select_clip(tabletop, TimeSelection(start=12))],
    }
    with tempfile.TemporaryDirectory() as scratch:
        for name, scene in SCENES.items():
            sets[f"{name}, {args.scenes} held-out scenes"] = held_out_scenes(scene, args.scenes, Path(scratch) / name)
        table = {(name, who): scores(model, clips) for name, clips in sets.items() for who, model in models.items()}
    size = sum(p.numel() for p in models[args.model].parameters()) / 1e6
    print(f"model {args.model} ({size:.1f} M parameters), input width {models[args.model].config.input_width}; "
          "random weights: the same architecture, seed 0")
    for name in sets:
        print(f"\n{name}\n\n| metric | " + " | ".join(models) + " |\n" + "|---" * (len(models) + 1) + "|")
        for metric in METRICS:
            print(f"| {metric} | " + " | ".join(f"{table[name, who][metric]:.3f}" for who in models) + " |")


if __name__ == "__main__":
    main()
