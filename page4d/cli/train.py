"""``page4d train [CONFIG] [key=value ...] -o RUN``: train or fine-tune on synthetic multi-view dynamic scenes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from page4d.cli.common import check_output
from page4d.train.config import TrainConfig


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train or fine-tune a model on synthetic multi-view dynamic scenes",
        description=(
            "Train with a YAML config (fields of page4d.train.config.TrainConfig) and key=value overrides, e.g. "
            "`page4d train run.yaml optim.lr=1e-4 steps=2000 -o runs/a`. RUN receives config.yaml, log.csv, "
            "checkpoint.pt (every checkpoint_every steps) and model/ (a page4d checkpoint) at the end."
        ),
    )
    p.add_argument("config", nargs="?", help="YAML config file (optional: defaults otherwise)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nested fields (optim.lr=1e-4)")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN from its checkpoint.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path:  # no config file, only overrides
        config_path, overrides = None, [config_path, *overrides]
    config = TrainConfig.load(config_path, overrides)
    import torch
    import torch.distributed as dist

    from page4d.train.trainer import Trainer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # started by torchrun
        dist.init_process_group("nccl" if config.device != "cpu" and torch.cuda.is_available() else "gloo")

    if not args.resume and (not dist.is_initialized() or dist.get_rank() == 0):
        check_output(args.output, overwrite=False)
    trainer = Trainer(config, args.output)
    if args.resume:
        trainer.resume()
    if not args.quiet and trainer.rank == 0:
        count = sum(p.numel() for p in trainer.model.parameters())
        trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(f"training {trained:,} of {count:,} parameters ({len(trainer.trained)} tensors) from step "
              f"{trainer.step} to {config.steps} in {args.output}")
    model = trainer.run(progress=not args.quiet)
    if not args.quiet and trainer.rank == 0:
        print(f"trained {trainer.step} steps; model in {model}, log in {args.output / 'log.csv'}")
    return 0
