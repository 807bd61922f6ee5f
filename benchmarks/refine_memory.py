"""Wall time and peak memory of ``page4d reconstruct --refine ba`` against the same run without refinement.

Builds a ``T``-step × ``V``-view clip from ``../shared/data/tabletop4v``'s 16 steps × 4 views, cycled over time;
views beyond the fourth are mirror images of the first four (other pixels, so SIFT finds other keypoints). Each
setting runs in a fresh process; the table gives its wall time, its peak RSS and the refinement's own report.

    python benchmarks/refine_memory.py [--steps 16 200] [--views 4 8] [--model page4d-small]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tabletop4v"


def clip_folder(folder: Path, steps: int, views: int) -> Path:
    """``folder/images/time_XXX/viewN.png``: tabletop4v's frames in a cycle, mirrored for views 4 and up."""
    sources = sorted((SOURCE / "images").glob("time_*"))
    mirrored = folder / "mirrored"
    for t in range(steps):
        step = folder / "images" / f"time_{t:03d}"
        step.mkdir(parents=True)
        for v in range(views):
            original = sources[t % len(sources)] / f"view{v % 4}.png"
            if v < 4:
                (step / f"view{v}.png").symlink_to(original)
                continue
            flipped = mirrored / f"{t % len(sources)}_{v % 4}.png"
            if not flipped.exists():
                flipped.parent.mkdir(exist_ok=True)
                ImageOps.mirror(Image.open(original)).save(flipped)
            (step / f"view{v}.png").symlink_to(flipped)
    return folder


def measure(clip: Path, out: Path, model: str, refine: str) -> tuple[float, float, dict | None]:
    """(seconds, peak RSS of the process in MB, ``meta["refine"]``) of one ``page4d reconstruct``."""
    command = [sys.executable, "-m", "page4d.cli.main", "reconstruct", str(clip), "-o", str(out), "--model", model,
               "--rig", "static", "--refine", refine, "--export", "none", "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    report = json.loads((out / "meta.json").read_text()).get("refine")
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 200])
    parser.add_argument("--views", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--model", default="page4d-small")
    args = parser.parse_args()
    print(f"model {args.model}, --rig static, 640×480 frames; RSS is the process's peak (children's maximum so far)")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        # RUSAGE_CHILDREN is a maximum over finished children: the settings run from the smallest up.
        for steps, views in zip(args.steps, args.views, strict=True):
            clip = clip_folder(scratch / f"clip_{steps}x{views}", steps, views)
            plain = measure(clip, scratch / f"plain_{steps}x{views}", args.model, "none")
            refined = measure(clip, scratch / f"ba_{steps}x{views}", args.model, "ba")
            report = refined[2]
            if report["status"] != "refined":
                print(f"{steps:>4} × {views}: without {plain[0]:7.1f} s, {plain[1]:6.0f} MB | --refine ba "
                      f"{refined[0]:7.1f} s, {refined[1]:6.0f} MB; refinement skipped: {report['reason']}")
                continue
            error = report["reprojection_error_px"]
            print(f"{steps:>4} × {views}: without {plain[0]:7.1f} s, {plain[1]:6.0f} MB | --refine ba "
                  f"{refined[0]:7.1f} s, {refined[1]:6.0f} MB; refinement {report['seconds']:.1f} s, "
                  f"+{report['peak_memory_added_mb']:.0f} MB, {report['points']} points, track length "
                  f"{report['mean_track_length']:.2f}, error {error['before']:.2f} -> {error['after']:.2f} px, "
                  f"method {report['method']}")
            if "fallback" in report:
                print(f"           fallback: {report['fallback']}")


if __name__ == "__main__":
    main()
