"""What each attention plan costs: one aggregator pass over a window of T × V frames, regrouped by the plan.

Same weights, same frames; ``set`` attends over all T·V frames at once, ``per-step`` over the V frames of each
step, ``factorised`` over the T frames of a camera and the V frames of a step (``page4d.attention_plans``). The
printed seconds per frame show how each plan's cost grows with T; CPU figures are meant as ratios.

    python benchmarks/attention_plans.py [--dim 192] [--depth 4] [--size 224] [--views 4] [--steps 2 4 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from page4d.aggregator import Aggregator
from page4d.attention_plans import PLANS
from page4d.config import AggregatorConfig, EncoderConfig


def seconds(agg: Aggregator, images: torch.Tensor, plan: str, repeats: int) -> float:
    """Mean seconds of one aggregator pass over ``images`` ``[1, T, V, 3, H, W]`` folded by ``plan``."""
    folded = PLANS[plan].fold(images)
    entries = {agg.cfg.depth - 1}  # the last entry only, as a camera head reads
    with torch.inference_mode():
        agg(folded, entries)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            agg(folded, entries)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=224, help="image width; height = 3/4 of it")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = AggregatorConfig(embed_dim=args.dim, depth=args.depth, num_heads=args.dim // 64)
    agg = Aggregator(cfg, EncoderConfig(kind="conv", embed_dim=args.dim, depth=0, num_heads=cfg.num_heads), 14).eval()
    height = args.size * 3 // 4 // 14 * 14
    tokens = (height // 14) * (args.size // 14) + 1 + cfg.num_register_tokens
    print(f"aggregator C={args.dim} depth={args.depth}, {args.size}×{height} px ({tokens} tokens per frame), "
          f"V={args.views}, {args.threads} threads, CPU; seconds per frame")
    print(f"{'T':>4} {'set':>9} {'per-step':>9} {'factorised':>11} {'set / per-step':>15}")
    for steps in args.steps:
        images = torch.rand(1, steps, args.views, 3, height, args.size)
        frames = steps * args.views
        cost = {plan: seconds(agg, images, plan, args.repeats) / frames for plan in ("set", "per-step", "factorised")}
        print(f"{steps:>4} {cost['set']:9.4f} {cost['per-step']:9.4f} {cost['factorised']:11.4f} "
              f"{cost['set'] / cost['per-step']:15.2f}")


if __name__ == "__main__":
    main()
