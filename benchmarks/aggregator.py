"""Aggregator cost: factorised time/view attention vs VGGT's frame/global schedule on the same inputs.

Same weights, same tokens; only the attention kinds of the two block banks differ. Also measures
what keeping only the heads' layer outputs saves against keeping all of them (VGGT's behaviour).
Each measurement runs in a fresh subprocess so peak RSS is per configuration. CPU figures are
meant as ratios.

    python benchmarks/aggregator.py [--dim 192] [--depth 4] [--size 224] [--tv 2x4 4x4 8x4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(args: argparse.Namespace, t: int, v: int, kinds: str, keep: str) -> dict:
    import torch

    from page4d.aggregator import Aggregator
    from page4d.config import AggregatorConfig, EncoderConfig

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    bank_kinds = {"time": "time", "view": "view"} if kinds == "ours" else {"time": "frame", "view": "global"}
    cfg = AggregatorConfig(embed_dim=args.dim, depth=args.depth, num_heads=args.dim // 64, bank_kinds=bank_kinds)
    enc = EncoderConfig(kind="conv", embed_dim=args.dim, depth=0, num_heads=cfg.num_heads)
    agg = Aggregator(cfg, enc, 14).eval()
    images = torch.rand(1, t, v, 3, args.size * 3 // 4 // 14 * 14, args.size)
    entries = range(args.depth) if keep == "all" else [args.depth - 1]
    with torch.inference_mode():
        agg(images, entries)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        for _ in range(args.repeats):
            out = agg(images, entries)
        seconds = (time.perf_counter() - start) / args.repeats
    del out
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}


def child(args: argparse.Namespace, t: int, v: int, kinds: str, keep: str) -> dict:
    cmd = [sys.executable, __file__, "--child", f"{t}x{v}", kinds, keep, "--dim", str(args.dim), "--depth",
           str(args.depth), "--size", str(args.size), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=224, help="image width; height = 3/4 of it")
    parser.add_argument("--tv", nargs="+", default=["2x4", "4x4", "8x4"], help="T x V grids")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        t, v = map(int, args.child[0].split("x"))
        print(json.dumps(measure(args, t, v, args.child[1], args.child[2])))
        return

    print(f"aggregator C={args.dim} depth={args.depth}, {args.size}px wide, {args.threads} threads, CPU")
    print(f"{'T x V':>6} {'time/view s':>12} {'frame/global s':>15} {'speed-up':>9} {'TV/(T+V)':>9} "
          f"{'RSS ours MB':>12} {'RSS global MB':>14}")
    for tv in args.tv:
        t, v = map(int, tv.split("x"))
        ours, glob = child(args, t, v, "ours", "last"), child(args, t, v, "global", "last")
        print(f"{tv:>6} {ours['seconds']:12.3f} {glob['seconds']:15.3f} {glob['seconds'] / ours['seconds']:9.2f} "
              f"{t * v / (t + v):9.2f} {ours['peak_rss_mb']:12.0f} {glob['peak_rss_mb']:14.0f}")

    t, v = map(int, args.tv[-1].split("x"))
    last, every = child(args, t, v, "ours", "last"), child(args, t, v, "ours", "all")
    print(f"\nkeeping layer outputs at T x V = {t}x{v}: last only {last['peak_rss_mb']:.0f} MB peak RSS, "
          f"all {args.depth} entries {every['peak_rss_mb']:.0f} MB "
          f"(+{every['peak_rss_mb'] - last['peak_rss_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
