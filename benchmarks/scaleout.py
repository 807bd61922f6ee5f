"""Grid parallelism: what each process holds and sends when one forward pass is spread over N processes.

1. **Measured on this CPU** (default): ``small-mv`` (the shipped model's architecture, random weights) on a T × V
   grid (168 × 126 unless ``--width``), run by 1, 2 and 4 gloo processes. Per rank: the memory the aggregator
   alone, and the whole forward pass, add at their peak (peak resident size, reset just before the pass, minus
   the resident size then; each in fresh processes, weights and inputs already there), the time of the whole
   pass, and the bytes the rank sends, counted at the collectives: all-to-all exchanges between time and view
   blocks, keys and values gathered where sequences span processes, and the gathers of the mask and the outputs.
   Per block: the exchanges and key gathers divided by the aggregator's blocks. The aggregator is what grid
   parallelism spreads; the heads run in frame chunks and every rank receives the whole outputs, so at this
   model's width (128) heads and outputs weigh more than the aggregator.
2. **Full size, counted** (``--full``): per-process training memory of a fine-tuning recipe
   (``finetune_page4d_mv.yaml``: page4d-mv, 1.27 B parameters, gradient checkpointing) at T × V × 518 for N = 1,
   2, 4, 8, counted on the meta device as ``benchmarks/train_memory.py`` does (weights + gradients + AdamW moments
   + the tensors autograd keeps), for the process that holds the most frames (rank 0); the collectives are
   replaced by meta tensors of the shapes they return.

    python benchmarks/scaleout.py [--times 8 --views 4] [--full]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import page4d.aggregator.grid as grid_module
from page4d.aggregator.grid import FrameGrid, GridShard
from page4d.model import Page4D
from page4d.presets import preset
from page4d.train.config import TrainConfig
from page4d.train.freeze import train_only

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_memory import GIB, crop_height, saved_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
FULL_SHAPES = [(8, 4), (16, 4), (8, 8), (16, 8), (32, 8)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _counting(traffic: dict[str, int]) -> None:
    """Wrap the frame grid's collectives so that each adds the bytes this process sends to ``traffic``."""
    move, seen, gather = FrameGrid._move, FrameGrid.seen, FrameGrid.gather

    def counted_move(self, local, src, dst):
        if not self._same(src, dst):
            kept = len(dst.span(self.rank)) / local.shape[dst.axis]  # its own chunk stays here
            traffic["exchange"] += round(local.numel() * local.element_size() * (1 - kept))
        return move(self, local, src, dst)

    def counted_seen(self, local, layout):
        if self.split(layout).gathered:
            traffic["keys"] += local.numel() * local.element_size() * (self.world - 1)
        return seen(self, local, layout)

    def counted_gather(self, local, layout="frame"):
        if self.sharded:
            traffic["outputs"] += local.numel() * local.element_size() * (self.world - 1)
        return gather(self, local, layout)

    FrameGrid._move, FrameGrid.seen, FrameGrid.gather = counted_move, counted_seen, counted_gather


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


def _reset_peak() -> int:
    """Reset this process's peak resident size to its current size (Linux ``clear_refs`` 5); returns that size
    (KiB), from which the next peak is counted."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status_kib("VmRSS")


def _worker(rank: int, world: int, port: int, times: int, views: int, width: int, part: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = Page4D(preset("small-mv")).eval()
        images = torch.rand(1, times, views, 3, crop_height(width), width, generator=torch.Generator().manual_seed(1))
        traffic = {"exchange": 0, "keys": 0, "outputs": 0}
        _counting(traffic)
        shard = GridShard() if world > 1 else None
        run = model if part == "model" else partial(model.aggregator, pose_keep=model.camera_entries(),
                                                          geometry_keep=model.dense_entries())
        with torch.inference_mode():
            model(images[:, :2, :2], shard=None)  # warm up the allocator and kernels on a tiny grid
            dist.barrier()
            before = _reset_peak()
            start = time.perf_counter()
            run(images, shard=shard)
            seconds = time.perf_counter() - start
        peak = (_status_kib("VmHWM") - before) / 1024
        torch.save({"peak_mb": peak, "seconds": seconds, **traffic}, os.path.join(out, f"{part}{rank}.pt"))
    finally:
        dist.destroy_process_group()


@dataclass
class Measured:
    world: int
    ranks: list[dict]


def measure(times: int, views: int, width: int, worlds: tuple[int, ...], scratch: Path) -> list[Measured]:
    results = []
    for world in worlds:
        folder = scratch / f"world{world}"
        folder.mkdir(parents=True, exist_ok=True)
        for part in ("aggregator", "model"):  # each in fresh processes: ru_maxrss only ever grows
            mp.spawn(_worker, args=(world, _free_port(), times, views, width, part, str(folder)), nprocs=world,
                     join=True)
        ranks = [{**torch.load(folder / f"model{r}.pt"),
                  "aggregator_mb": torch.load(folder / f"aggregator{r}.pt")["peak_mb"]} for r in range(world)]
        results.append(Measured(world, ranks))
    return results


def print_measured(results: list[Measured], times: int, views: int, width: int) -> None:
    cfg = preset("small-mv").aggregator
    blocks = 2 * cfg.depth + (0 if cfg.sparse_global is None else len(cfg.sparse_global.after_pairs))
    base = results[0].ranks[0]
    print(f"small-mv, {times} × {views} frames of {width} × {crop_height(width)}, forward pass, gloo on this CPU (1 "
          "thread per process)")
    print("| processes | rank | aggregator peak (vs 1) | whole forward peak (vs 1) | time | exchanged | keys gathered "
          "| per block (exchange + keys) | mask and outputs gathered |")
    print("|---|---|---|---|---|---|---|---|---|")
    for result in results:
        for rank, r in enumerate(result.ranks):
            per_block = (r["exchange"] + r["keys"]) / blocks / MIB
            aggregator = r["aggregator_mb"]
            print(f"| {result.world} | {rank} | {aggregator:.0f} MB ({aggregator / base['aggregator_mb']:.2f}×) "
                  f"| {r['peak_mb']:.0f} MB ({r['peak_mb'] / base['peak_mb']:.2f}×) | {r['seconds']:.2f} s | "
                  f"{r['exchange'] / MIB:.1f} MB | {r['keys'] / MIB:.1f} MB | {per_block:.2f} MB | "
                  f"{r['outputs'] / MIB:.1f} MB |")


@dataclass(frozen=True)
class _Rank(GridShard):
    """Rank 0 of ``world`` processes, simulated on the meta device (no process group)."""

    world: int = 1

    def position(self) -> tuple[int, int]:
        return 0, self.world


def _meta_collectives() -> None:
    """Collectives that return meta tensors of the shapes the real ones would."""

    def exchange(chunks, shapes, group=None):
        return [torch.empty(s, dtype=chunks[0].dtype, device="meta") for s in shapes]

    def gather(x, dim, sizes=None, group=None):
        shape = list(x.shape)
        shape[dim % x.dim()] = sum(sizes)
        return torch.empty(shape, dtype=x.dtype, device="meta")

    grid_module.exchange, grid_module.gather = exchange, gather


def full_size(config_path: Path, worlds: tuple[int, ...]) -> None:
    config = TrainConfig.load(config_path)
    with torch.device("meta"):
        model = Page4D(preset(config.model)).train()
    train_only(model, config.train)
    model.aggregator.gradient_checkpointing = config.gradient_checkpointing
    total = sum(p.numel() for p in model.parameters())
    learn = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed = (4 * total + 12 * learn) / GIB
    _meta_collectives()
    print(f"{config_path.name}: {config.model}, weights + gradients + AdamW moments {fixed:.1f} GiB per process; "
          "saved activations of rank 0 (+ that = the estimate per GPU)")
    print("| T | V | resolution | " + " | ".join(f"{n} process{'es' if n > 1 else ''}" for n in worlds) + " |")
    print("|---|---|---|" + "---|" * len(worlds))
    for times, views in FULL_SHAPES:
        cells = []
        for world in worlds:
            acts = saved_bytes(model, times, views, 518, shard=_Rank(world=world) if world > 1 else None) / GIB
            cells.append(f"{acts:.1f} GiB ({fixed + acts:.0f})")
        print(f"| {times} | {views} | 518×{crop_height(518)} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--times", type=int, default=8)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--width", type=int, default=168, help="model-input width (4:3 frames; default 168)")
    parser.add_argument("--full", action="store_true", help="also the full-size training table (meta device)")
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "train" / "finetune_page4d_mv.yaml")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        print_measured(measure(args.times, args.views, args.width, (1, 2, 4), Path(scratch)), args.times, args.views,
                       args.width)
    if args.full:
        print()
        full_size(args.config, (1, 2, 4, 8))


if __name__ == "__main__":
    main()
