"""What token reduction saves: one forward pass of the whole model with and without it, time and peak memory.

Preset ``small-mv`` (page4d-small's architecture, random weights), frames ``--width`` px wide at 4:3; reduction
pools the patch tokens 2 × 2 in the listed time and view blocks (default: every block but the first and the
last, so the mask head and every DPT tap still read full-size outputs as they always do). Each setting runs in a
fresh process, so its peak RSS is its own; the time is the mean of ``--repeats`` passes after a warm-up.

    python benchmarks/token_reduction.py [--grids 8x4 16x8] [--width 518] [--blocks 1 2 3 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time

import torch

from page4d.config import TokenReductionConfig
from page4d.model import Page4D
from page4d.presets import preset


def one_run(steps: int, views: int, width: int, blocks: tuple[int, ...], repeats: int, threads: int) -> dict:
    """Seconds per pass and peak RSS (MB) of this process for one setting (``blocks`` empty: no reduction)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = preset("small-mv")
    reduction = TokenReductionConfig(2, blocks, blocks) if blocks else None
    cfg.aggregator = dataclasses.replace(cfg.aggregator, token_reduction=reduction)
    model = Page4D(cfg).eval()
    height = width * 3 // 4 // 14 * 14
    images = torch.rand(1, steps, views, 3, height, width)
    with torch.inference_mode():
        model(images)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(images)
    seconds = (time.perf_counter() - start) / repeats
    return {"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "patches": (height // 14) * (width // 14)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="+", default=["8x4", "16x8"], help="T x V per setting")
    parser.add_argument("--width", type=int, default=518)
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: 'T,V,blocks' -> one JSON line
    args = parser.parse_args()
    if args.one:
        steps, views, blocks = args.one.split(",")
        chosen = tuple(int(b) for b in blocks.split("+") if b)
        print(json.dumps(one_run(int(steps), int(views), args.width, chosen, args.repeats, args.threads)))
        return
    chosen = "+".join(str(b) for b in args.blocks)
    print(f"small-mv, random weights, {args.width} px wide, {args.threads} threads, CPU; reduction: 2 × 2 pooling "
          f"in time and view blocks {args.blocks}; peak RSS of a fresh process per setting")
    print(f"{'T × V':>7} {'plain s':>9} {'reduced s':>10} {'time ratio':>11} {'plain MB':>9} {'reduced MB':>11} "
          f"{'memory ratio':>13}")
    for grid in args.grids:
        steps, views = (int(n) for n in grid.split("x"))
        runs = []
        for blocks in ("", chosen):
            command = [sys.executable, __file__, "--one", f"{steps},{views},{blocks}", "--width", str(args.width),
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]
            runs.append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
        plain, reduced = runs
        print(f"{grid:>7} {plain['seconds']:9.2f} {reduced['seconds']:10.2f} "
              f"{reduced['seconds'] / plain['seconds']:11.2f} {plain['peak_mb']:9.0f} {reduced['peak_mb']:11.0f} "
              f"{reduced['peak_mb'] / plain['peak_mb']:13.2f}")


if __name__ == "__main__":
    main()
