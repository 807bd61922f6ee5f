"""Wall time and peak memory of ``page4d reconstruct`` on a long clip, windowed, against one short pass.

Builds a synthetic ``T``-step × 4-view clip by cycling the 16 time steps of ``../shared/data/tabletop4v``
(symbolic links, so it costs no disk), then runs ``page4d reconstruct`` in a fresh process per setting and
reports that process's wall time and peak RSS. Windowing should keep the peak of a 200-step clip close to
that of a single window, while the wall time grows linearly.

    python benchmarks/long_clip.py [--steps 200] [--window 16] [--overlap 2] [--model tiny-mv] [--size 518]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tabletop4v"


def synthetic_clip(folder: Path, steps: int) -> Path:
    """``folder/images/time_XXX/viewN.png`` linking to tabletop4v's steps in a cycle."""
    sources = sorted((SOURCE / "images").glob("time_*"))
    for t in range(steps):
        step = folder / "images" / f"time_{t:03d}"
        step.mkdir(parents=True)
        for view in sorted(sources[t % len(sources)].glob("view*.png")):
            (step / view.name).symlink_to(view)
    return folder


def measure(clip: Path, out: Path, args: argparse.Namespace, window: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one ``page4d reconstruct`` process."""
    command = [sys.executable, "-m", "page4d.cli.main", "reconstruct", str(clip), "-o", str(out), "--model",
               args.model, "--size", str(args.size), "--window", window, "--overlap", str(args.overlap),
               "--export", "none", "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--model", default="tiny-mv")
    parser.add_argument("--size", type=int, default=518)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        short = synthetic_clip(scratch / "short", args.window)
        long = synthetic_clip(scratch / "long", args.steps)
        # RUSAGE_CHILDREN is a maximum over finished children, so measure the smaller run first.
        one_seconds, one_peak = measure(short, scratch / "out_short", args, "all")
        long_seconds, long_peak = measure(long, scratch / "out_long", args, str(args.window))
    frames_short, frames_long = args.window * 4, args.steps * 4
    print(f"model {args.model}, {args.size} px wide, 4 views, window {args.window} steps, overlap {args.overlap}")
    print(f"{args.window:>4} steps, one pass : {one_seconds:7.1f} s ({frames_short / one_seconds:.2f} frames/s), "
          f"peak RSS {one_peak:.0f} MB")
    print(f"{args.steps:>4} steps, windowed : {long_seconds:7.1f} s ({frames_long / long_seconds:.2f} frames/s), "
          f"peak RSS {long_peak:.0f} MB (x{long_peak / one_peak:.2f} of one window)")


if __name__ == "__main__":
    main()
