"""Overhead of the rank-1 mask bias (q/k augmentation) vs plain fused attention, and the dense reference.

    python benchmarks/attention_bias.py [--tokens 4096] [--dim 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from page4d.nn import Block, RotaryEmbedding2D, RowKeyBias, set_attention_backend


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="sequence length L (e.g. 4 frames of 1024)")
    parser.add_argument("--dim", type=int, default=256, help="channels; heads of 64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    block = Block(args.dim, args.dim // 64, qk_norm=True, init_values=0.01, rope=RotaryEmbedding2D()).eval()
    x = torch.randn(1, args.tokens, args.dim)
    pos = torch.randint(0, 40, (args.tokens, 2))
    rows = torch.zeros(1, args.tokens)
    rows[:, ::200] = 64.0
    bias = RowKeyBias(rows=rows, keys=torch.rand(1, args.tokens) - 0.5)
    with torch.inference_mode():
        plain = timed(lambda: block(x, pos), args.repeats)
        biased = timed(lambda: block(x, pos, bias=bias), args.repeats)
        set_attention_backend(block, "dense")
        dense = timed(lambda: block(x, pos, bias=bias), args.repeats)
    print(f"block C={args.dim}, L={args.tokens}, {args.threads} threads, CPU")
    print(f"plain fused      {plain * 1e3:8.1f} ms")
    print(f"biased fused     {biased * 1e3:8.1f} ms  ({biased / plain:.2f}x plain)")
    print(f"biased dense     {dense * 1e3:8.1f} ms  ({dense / plain:.2f}x plain; materialises L×L)")


if __name__ == "__main__":
    main()
