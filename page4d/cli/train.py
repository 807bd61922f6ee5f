"""``page4d train [CONFIG] [key=value ...] -o RUN``: train or fine-tune on synthetic multi-view dynamic scenes."""

from __future__ import annotations

import argparse
from pathlib import Path

from page4d.train.config import TrainConfig
from page4d.transaction import (
    OutputLock,
    check_disjoint,
    clean_stale,
    disk_full_error,
    is_disk_full,
    swap_into_place,
    temporary_sibling,
)


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train or fine-tune a model on synthetic multi-view dynamic scenes",
        description=(
            "Train with a YAML config (fields of page4d.train.config.TrainConfig) and key=value overrides, e.g. "
            "`page4d train run.yaml optim.lr=1e-4 steps=2000 -o runs/a`. RUN receives config.yaml, log.csv, "
            "checkpoint.pt (every checkpoint_every steps) and model/ (a page4d checkpoint) at the end. The run "
            "folder is created only once the config, data and model are known to be good; it is always resumable "
            "(checkpoints and model/ are replaced whole, --resume trims the logs to the checkpoint's step), and "
            "one run at a time may use it."
        ),
    )
    p.add_argument("config", nargs="?", help="YAML config file (optional: defaults otherwise)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nested fields (optim.lr=1e-4)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="run folder (created; must be empty unless --resume or --overwrite)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN from its checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in RUN, discarding the run that is there (once the new one is ready to start)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _inputs(config_path: str | None, config: TrainConfig) -> list[Path]:
    """The local files and folders the run reads, which RUN must not overlap."""
    named = [config_path, config.init, *(source.path for source in config.data)]
    return [Path(v) for v in named if v is not None and Path(v).exists()]


def run(args: argparse.Namespace) -> int:
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in RUN and --overwrite discards it; give one of them")
    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path:  # no config file, only overrides
        config_path, overrides = None, [config_path, *overrides]
    config = TrainConfig.load(config_path, overrides)
    check_disjoint(args.output, _inputs(config_path, config))
    from page4d.devices import resolve_device
    from page4d.distributed.processes import join

    processes = join(resolve_device(config.device))  # started by torchrun: one process group
    try:
        return _owned(args, config) if processes.leader else _train(args, config)  # rank 0 owns the folder
    finally:
        processes.close()


def _owned(args: argparse.Namespace, config: TrainConfig) -> int:
    """Rank 0's run: the output folder claimed, checked, and trained into."""
    out = args.output.resolve()
    with OutputLock(out):
        for note in clean_stale(out):
            print(f"note: {note}")
        if out.exists() and not out.is_dir():
            raise ValueError(f"-o {args.output} exists and is not a folder; choose another -o")
        used = out.is_dir() and any(out.iterdir())
        if used and not (args.resume or args.overwrite):
            raise ValueError(f"-o {args.output} exists and is not empty; pass --resume to continue its run, "
                             "--overwrite to start over (discarding it) or choose another -o")
        return _train(args, config, discard_old=used and args.overwrite)


def _train(args: argparse.Namespace, config: TrainConfig, discard_old: bool = False) -> int:
    from page4d.train.trainer import Trainer

    trainer = Trainer(config, args.output)  # fails on bad config, data or model before RUN is touched
    if args.resume:
        trainer.resume()
    elif discard_old:
        empty = temporary_sibling(args.output.resolve(), "new")
        empty.mkdir()
        swap_into_place(empty, args.output.resolve())
    if not args.quiet and trainer.rank == 0:
        count = sum(p.numel() for p in trainer.model.parameters())
        trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(f"training {trained:,} of {count:,} parameters ({len(trainer.trained)} tensors) from step "
              f"{trainer.step} to {config.steps} in {args.output}")
    try:
        model = trainer.run(progress=not args.quiet)
    except Exception as err:  # a full disk surfaces from many writers (csv, torch.save, safetensors)
        if is_disk_full(err, args.output):
            raise disk_full_error(args.output, f"the run in {args.output}", err) from None
        raise
    if not args.quiet and trainer.rank == 0:
        print(f"trained {trainer.step} steps; model in {model}, log in {args.output / 'log.csv'}")
    return 0
