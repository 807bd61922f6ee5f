"""Training memory of a fine-tuning recipe per (T, V, resolution), estimated from the model's saved tensors.

The model is built on the meta device (no memory, no compute) with the recipe's frozen / trained split and
gradient-checkpointing setting; one forward pass records every tensor autograd keeps for the backward pass
(deduplicated by storage). The estimate per GPU, for one sample, is

    weights (fp32) + gradients and AdamW moments of the trained parameters (3 × fp32) + saved activations

Saved tensors are counted at their meta-device dtype, fp32. With gradient checkpointing (the recipe's setting)
that is what bf16 autocast keeps too: the checkpointed aggregator stores only its fp32 block inputs and tapped
outputs, and the heads run in fp32. Without checkpointing the meta device cannot stand in: its attention is
the math kernel, which stores the N × N weights that CUDA's fused kernels never form, so only the recipe's
setting is reported. Transient buffers (one block's recomputation, the allocator's slack) come on top.

    python benchmarks/train_memory.py [--config examples/train/finetune_page4d_mv.yaml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from page4d.aggregator.grid import GridShard
from page4d.inputs import ForwardInputs
from page4d.model import Page4D
from page4d.presets import preset
from page4d.train.config import TrainConfig
from page4d.train.freeze import train_only

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(2, 4, 518), (4, 4, 518), (8, 4, 518), (4, 8, 518), (8, 8, 518), (16, 4, 518), (4, 4, 294)]
"""(T, V, width) of one sample; heights follow a 4:3 capture in crop mode."""
GIB = 2**30


def crop_height(width: int) -> int:
    """Model-input height of a 4:3 capture in crop mode (392 for 518)."""
    return round(width * 3 / 4 / 14) * 14


def saved_bytes(model: Page4D, times: int, views: int, width: int, shard: GridShard | None = None) -> int:
    """Bytes autograd keeps for the backward pass of one ``[1, T, V, 3, H, W]`` sample (4:3 crop); with ``shard``,
    in the process of the grid ``shard`` names (``benchmarks/scaleout.py``)."""
    height = crop_height(width)
    images = torch.rand(1, times, views, 3, height, width, device="meta")
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage._cdata] = max(storages.get(storage._cdata, 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images, ForwardInputs(mask_step=0.0), shard=shard)
    return sum(storages.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "examples" / "train" / "finetune_page4d_mv.yaml")
    args = parser.parse_args()
    config = TrainConfig.load(args.config)
    with torch.device("meta"):
        model = Page4D(preset(config.model)).train()
    trained = train_only(model, config.train)
    total = sum(p.numel() for p in model.parameters())
    learn = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed = (4 * total + 12 * learn) / GIB
    print(f"{args.config.name}: model {config.model}, {total / 1e6:.0f} M parameters, {learn / 1e6:.0f} M trained "
          f"({len(trained)} tensors), gradient checkpointing {'on' if config.gradient_checkpointing else 'off'}")
    print(f"weights + gradients + AdamW moments: {fixed:.1f} GiB")
    model.aggregator.gradient_checkpointing = config.gradient_checkpointing
    print("| T | V | resolution | saved activations | estimate per GPU |")
    print("|---|---|---|---|---|")
    for times, views, width in SHAPES:
        acts = saved_bytes(model, times, views, width) / GIB
        print(f"| {times} | {views} | {width}×{crop_height(width)} | {acts:.1f} GiB | {fixed + acts:.1f} GiB |")


if __name__ == "__main__":
    main()
