"""Cost of the attention biases vs plain fused attention, for one aggregator view block on CPU.

    rank-1 mask bias (PAGE-4D / pose-geo λ): q/k augmented by 8 channels, fused kernel
    epipolar prior: explicit bias one block of ``chunk`` query rows at a time, fused kernel per chunk
    dense reference: the full L×L logits (what the fused paths avoid)

    python benchmarks/attention_bias.py [--views 4] [--grid 28x37] [--dim 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from page4d.aggregator.epipolar import EpipolarBias
from page4d.aggregator.tokens import frame_positions
from page4d.config import EpipolarConfig
from page4d.nn import AttentionExtras, Block, RotaryEmbedding2D, RowKeyBias, set_attention_backend


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def ring_cameras(views: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[1, 1, V, 3, 3]`` intrinsics and ``[1, 1, V, 3, 4]`` world-to-camera extrinsics on an arc."""
    ks, es = [], []
    for i in range(views):
        angle = 0.5 * i
        centre = torch.tensor([4 * math.sin(angle), 0.2 * i, -4 * math.cos(angle)])
        forward = -centre / centre.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), forward)
        right = right / right.norm()
        rot = torch.stack([right, torch.linalg.cross(forward, right), forward])
        es.append(torch.cat([rot, (-rot @ centre)[:, None]], dim=1))
        ks.append(torch.tensor([[0.8 * width, 0, width / 2], [0, 0.8 * width, height / 2], [0, 0, 1]]))
    return torch.stack(ks)[None, None], torch.stack(es)[None, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--grid", default="28x37", help="patch grid h x w of each view")
    parser.add_argument("--dim", type=int, default=256, help="channels; heads of 64")
    parser.add_argument("--chunk", type=int, default=1024, help="epipolar query rows per block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    h, w = map(int, args.grid.split("x"))
    frame = frame_positions(h, w, 5)
    tokens = args.views * frame.shape[0]
    block = Block(args.dim, args.dim // 64, qk_norm=True, init_values=0.01, rope=RotaryEmbedding2D()).eval()
    x = torch.randn(1, tokens, args.dim)
    pos = frame.repeat(args.views, 1)
    rows = torch.zeros(1, tokens)
    rows[:, ::frame.shape[0]] = 64.0
    rank1 = RowKeyBias(rows=rows, keys=torch.rand(1, tokens) - 0.5)
    epipolar = EpipolarBias(
        *ring_cameras(args.views, h * 14, w * 14), (h, w), 14, 5,
        EpipolarConfig(view_blocks=(0,), band_px=14.0, penalty=4.0, chunk_size=args.chunk),
    )
    biased, banded = AttentionExtras(bias=rank1), AttentionExtras(chunked_bias=epipolar)
    with torch.inference_mode():
        results = {
            "plain fused": timed(lambda: block(x, pos), args.repeats),
            "rank-1 bias, fused": timed(lambda: block(x, pos, biased), args.repeats),
            "epipolar, chunked fused": timed(lambda: block(x, pos, banded), args.repeats),
        }
        set_attention_backend(block, "dense")
        results["rank-1 bias, dense L×L"] = timed(lambda: block(x, pos, biased), args.repeats)
        results["epipolar, dense L×L"] = timed(lambda: block(x, pos, banded), args.repeats)
    print(f"view block C={args.dim}, V={args.views}, {h}x{w} patches, L={tokens}, {args.threads} threads, CPU")
    for name, seconds in results.items():
        print(f"{name:26s} {seconds * 1e3:9.1f} ms  {seconds / results['plain fused']:5.2f}x plain")


if __name__ == "__main__":
    main()
