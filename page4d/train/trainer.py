"""The training loop: synthetic batches, VGGT's multitask loss plus the mask loss, AdamW, resumable checkpoints.

Batches are a pure function of ``(seed, step)`` (:class:`Batches`), so a resumed or data-parallel run sees
exactly the data an uninterrupted single-process one would.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from page4d.aggregator.grid import GridShard
from page4d.data.clip import MultiViewClip
from page4d.data.layout import load_clip
from page4d.data.samplers import ClipSamples, WindowSampler, colour_jitter, quarter_turn, zoom
from page4d.data.sources import TimeSelection, select_clip
from page4d.data.synthetic import SceneConfig, generate_clip, write_clip
from page4d.devices import resolve_device
from page4d.distributed.processes import grid_group
from page4d.eval.runner import evaluate, report_value
from page4d.model import Page4D
from page4d.outputs import Predictions
from page4d.patterns import match_patterns
from page4d.presets import preset
from page4d.reconstruction.runner import reconstruct
from page4d.train.config import DataSource, OptimConfig, TrainConfig, check_scene_size
from page4d.train.freeze import train_only
from page4d.train.inputs import forward_inputs, sample_inputs
from page4d.train.losses import Terms, camera_loss, dense_loss, mask_loss, weighted_sum
from page4d.train.targets import Targets, make_targets
from page4d.transaction import OutputFolder, disk_full_error, is_disk_full

CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"
EVAL_LOG = "eval.csv"
EVAL_SEED = 2**31
"""Held-out scenes use seeds from here on; training scenes draw theirs below it, so the two never meet."""
TURN_STREAM = 2**31 + 1
"""The last seed word of the per-step portrait draw (``PRESENCE_STREAM`` is the inputs' one)."""
EVAL_METRICS = {
    "depth_abs_rel": ("depth", "median", "all", "abs_rel"),
    "depth_delta_1.25": ("depth", "median", "all", "delta_1.25"),
    "ate_rmse": ("cameras", "ate_rmse"), "auc@30": ("cameras", "auc@30"), "mask_iou": ("dynamic_mask", "iou"),
}
"""Columns of ``eval.csv``: paths into the ``page4d eval`` report, averaged over the held-out scenes."""
CONFIG = "config.yaml"
MODEL = "model"
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "step", "rng")


def _clip_part(source: DataSource, i: int) -> MultiViewClip:
    """The clip at ``source.path`` from time position ``source.start`` on, at most ``source.frames`` steps."""
    clip = load_clip(source.path)
    if not 0 <= source.start < clip.num_times or (source.frames is not None and source.frames < 1):
        raise ValueError(f"data[{i}] {source.path}: start {source.start} / frames {source.frames} select no time "
                         f"steps of its {clip.num_times}; use 0 <= start < {clip.num_times} and frames >= 1")
    return select_clip(clip, TimeSelection(start=source.start, frames=source.frames))


class Batches:
    """The batches of a run: sample ``i`` of step ``s`` is drawn by a generator seeded with (seed, s, i) from
    one of ``config.data`` (chosen by weight), so any process can make any sample on its own."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.sources: list[ClipSamples | None] = []
        for i, source in enumerate(config.data):
            if source.kind == "synthetic":
                self.sources.append(None)
            elif source.kind == "clip" and source.path:
                clip = ClipSamples(_clip_part(source, i), config.scene.width)
                if clip.size != (config.scene.height, config.scene.width):
                    raise ValueError(f"data[{i}] {source.path}: at width {config.scene.width} its images are "
                                     f"{clip.size[0]} high, not scene.height {config.scene.height}; set scene.height")
                self.sources.append(clip)
            else:
                raise ValueError(f"data[{i}]: kind must be 'synthetic' or 'clip' (with a path), got {source}")
        weights = np.array([source.weight for source in config.data], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"data weights must be >= 0 with a positive sum, got {weights.tolist()}")
        self.probabilities = weights / weights.sum()
        self.sampler = WindowSampler(config.scene.num_times, config.scene.num_views)

    def sample(self, step: int, i: int) -> dict[str, torch.Tensor]:
        """Sample ``i`` of step ``step``: ``images [T, V, 3, H, W]``, ``depth``, ``dynamic_mask``,
        ``intrinsics``, ``extrinsics`` and the optional inputs of the step."""
        rng = np.random.default_rng([self.config.seed, step, i])
        source = self.sources[int(rng.choice(len(self.sources), p=self.probabilities))]
        if source is None:
            clip = generate_clip(self.config.scene, int(rng.integers(EVAL_SEED)))
            names = ("images", "depth", "dynamic_mask", "intrinsics", "extrinsics")
            sample = {name: getattr(clip, name) for name in names}
        else:
            sample = source.sample(*self.sampler.draw(rng, *source.shape))
        sample = zoom(sample, rng, self.config.zoom)
        if self.turned(step):
            sample = quarter_turn(sample, clockwise=bool(rng.random() < 0.5))
        sample["images"] = colour_jitter(sample["images"], rng, self.config.jitter)
        return sample | sample_inputs(sample, rng, self.config.inputs, self.config.inputs.present(self.config.seed,
                                                                                                  step))

    def turned(self, step: int) -> bool:
        """Whether the samples of ``step`` are portrait (``TrainConfig.portrait``)."""
        return bool(np.random.default_rng([self.config.seed, step, TURN_STREAM]).random() < self.config.portrait)

    def batch(self, step: int, samples: range | None = None) -> dict[str, torch.Tensor]:
        """Samples ``samples`` (default: all ``batch_size``) of step ``step``, stacked ``[B, ...]`` (with the
        optional inputs the step's batch carries: ``page4d.train.inputs``)."""
        samples = range(self.config.batch_size) if samples is None else samples
        drawn = [self.sample(step, i) for i in samples]
        return {name: torch.stack([d[name] for d in drawn]) for name in drawn[0]}


class _StepBatches(Dataset):
    """Item ``k``: the batch (the ``samples`` share) of step ``steps[k]``, for a ``DataLoader``'s workers."""

    def __init__(self, batches: Batches, steps: range, samples: range):
        self.batches, self.steps, self.samples = batches, steps, samples

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return self.batches.batch(self.steps[k], self.samples)


def _sample_terms(pred: Predictions, targets: Targets, i: int) -> Terms:
    """The loss terms of sample ``i`` of a batch."""
    one = slice(i, i + 1)
    valid = targets.valid[one].flatten(0, 2)
    terms = camera_loss([p[one] for p in pred.pose_enc_list], targets.pose_enc[one])
    terms |= dense_loss(pred.depth[one].flatten(0, 2), pred.depth_conf[one].flatten(0, 2),
                        targets.depth[one, ..., None].flatten(0, 2), valid, "depth", gamma=0.3, alpha=0.06)
    terms |= dense_loss(pred.world_points[one].flatten(0, 2), pred.world_points_conf[one].flatten(0, 2),
                        targets.world_points[one].flatten(0, 2), valid, "point", gamma=1.0, alpha=0.2)
    if pred.dynamic_mask is not None:
        terms |= mask_loss(pred.dynamic_mask[one], targets.dynamic_mask[one])
    return terms


def compute_losses(model: nn.Module, batch: dict[str, torch.Tensor], step: int, weights: dict[str, float],
                   shard: GridShard | None = None) -> tuple[torch.Tensor, Terms]:
    """Total loss and its named terms for one batch, each the mean over samples of that sample's term (so that
    data-parallel ranks averaging their gradients reproduce the whole batch). Mask terms only with a mask head.

    ``shard``: the batch's frames are spread over the processes of its group, each of which gets the whole
    predictions and so the whole loss; the gradients that flow back through the exchanges then sum to that group's
    size times the batch's gradient, which averaging over every process (DDP) turns into the data-parallel mean."""
    pred = model(batch["images"], forward_inputs(batch, step), shard=shard)
    targets = make_targets(batch["extrinsics"], batch["intrinsics"], batch["depth"], batch["dynamic_mask"])
    per_sample = [_sample_terms(pred, targets, i) for i in range(len(batch["images"]))]
    terms = {k: torch.stack([t[k] for t in per_sample]).mean() for k in per_sample[0]}
    used = {k: w for k, w in weights.items() if k in terms or not k.startswith("mask_")}
    return weighted_sum(terms, used), terms


def held_out_scenes(scene: SceneConfig, count: int, folder: Path) -> list[MultiViewClip]:
    """``count`` held-out synthetic scenes (seeds ``EVAL_SEED + k``) written as clips under ``folder``."""
    return [load_clip(write_clip(generate_clip(scene, EVAL_SEED + k), folder / f"scene_{k}")) for k in range(count)]


def evaluate_synthetic(model: Page4D, config: TrainConfig) -> dict[str, float]:
    """``page4d eval`` metrics of ``model`` on ``config.eval_scenes`` held-out synthetic scenes, averaged."""
    totals: dict[str, list[float]] = {name: [] for name in EVAL_METRICS}
    with tempfile.TemporaryDirectory() as scratch:
        for clip in held_out_scenes(config.scene, config.eval_scenes, Path(scratch)):
            report = evaluate(clip, reconstruct(model, clip, size=config.scene.width, progress=False))
            for name, path in EVAL_METRICS.items():
                value = report_value(report, path)
                if value is not None:
                    totals[name].append(value)
    return {name: float(np.mean(values)) for name, values in totals.items() if values}


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, optim: OptimConfig) -> tuple[list[dict], list[int]]:
    """AdamW parameter groups of the trainable parameters (``optim.groups`` first, the rest in a default group)
    and each group's warm-up; a parameter claimed by two groups, or a pattern matching no trainable parameter,
    is an error."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    claimed: dict[str, int] = {}
    groups, warmups = [], []
    for index, group in enumerate(optim.groups):
        names = match_patterns(group.patterns, list(trainable), f"optim.groups[{index}]",
                               hint="a group's patterns must match parameters that train (see `train`)")
        twice = sorted(n for n in names if n in claimed)
        if twice:
            raise ValueError(f"optim.groups[{index}] claims {twice[:3]} already in group {claimed[twice[0]]}")
        claimed.update(dict.fromkeys(names, index))
        groups.append({"params": [trainable[n] for n in sorted(names)], "lr": group.lr,
                       "weight_decay": group.weight_decay})
        warmups.append(group.warmup_steps)
    rest = [trainable[n] for n in trainable if n not in claimed]
    if rest:
        groups.append({"params": rest, "lr": optim.lr, "weight_decay": optim.weight_decay})
        warmups.append(optim.warmup_steps)
    return groups, warmups


class Trainer:
    """One run in ``folder``: ``config.yaml``, ``log.csv``, ``checkpoint.pt`` (resumable) and ``model/`` at the end.

    Everything a bad config can break fails here, in the constructor; nothing is written before :meth:`run`."""

    def __init__(self, config: TrainConfig, folder: str | Path):
        config.validate()  # again: a config changed after it was built is checked too
        self.config, self.folder = config, Path(folder)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        grid = config.grid_processes
        if self.world % grid:
            raise ValueError(f"grid_processes {grid} must divide the {self.world} processes (data-parallel groups × "
                             "grid_processes)")
        self.groups = self.world // grid
        if config.batch_size % self.groups:
            raise ValueError(f"batch_size {config.batch_size} must be a multiple of the {self.groups} data-parallel "
                             f"groups ({self.world} processes / grid_processes {grid})")
        scene, share = config.scene, config.batch_size // self.groups
        if grid > 1 and max(share, scene.num_times, scene.num_views) < grid:
            raise ValueError(f"grid_processes {grid} share each group's {share} samples of {scene.num_times} × "
                             f"{scene.num_views} frames, and need at least {grid} samples, time steps or views")
        self.shard = GridShard(grid_group(grid)) if grid > 1 else None
        self.device = resolve_device(config.device)
        self.batches = Batches(config)
        torch.manual_seed(config.seed)
        if config.init:
            from page4d.checkpoints.pretrained import load_pretrained

            self.model = load_pretrained(config.init)[0]
            check_scene_size(config.scene, self.model.config.patch_size, config.init)
            config.inputs.check_model(self.model.config)
        else:
            self.model = Page4D(preset(config.model))
        self.model.to(self.device)
        self.model.aggregator.gradient_checkpointing = config.gradient_checkpointing
        self.trained = train_only(self.model, config.train)
        # Each data-parallel group computes its share of the batch (its grid processes each the whole loss of it, see
        # compute_losses); DDP averages the gradients over every process: the batch mean.
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.net = (DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)
                    if self.world > 1 else self.model)
        groups, warmups = param_groups(self.model, config.optim)
        self.optimizer = torch.optim.AdamW(groups)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [partial(lr_factor, warmup=w, total=config.steps, floor=config.optim.min_lr_ratio)
                             for w in warmups])
        self.step = 0

    @property
    def _share(self) -> range:
        """The samples of each batch this process's data-parallel group computes (its grid processes share them)."""
        share, group = self.config.batch_size // self.groups, self.rank // self.config.grid_processes
        return range(group * share, (group + 1) * share)

    def train_step(self, batch: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """One optimisation step on the batch of ``self.step`` (made here unless given, as :meth:`batches_ahead`
        makes it); returns the logged values."""
        self.model.train()
        batch = self.batches.batch(self.step, self._share) if batch is None else batch
        batch = {k: v.to(self.device) for k, v in batch.items()}
        total, terms = compute_losses(self.net, batch, self.step, self.config.loss_weights, self.shard)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"step": self.step, "lr": self.scheduler.get_last_lr()[0], "loss": total.item(),
                "grad_norm": norm.item(), **{k: v.item() for k, v in terms.items()}}

    def batches_ahead(self) -> Iterator[dict[str, torch.Tensor] | None]:
        """This process's batches from ``self.step`` to the last step: made by ``config.workers`` background
        processes a few steps ahead, or (no workers) None each, for :meth:`train_step` to make in the loop."""
        steps = range(self.step, self.config.steps)
        if not self.config.workers:
            yield from (None for _ in steps)
            return
        loader = DataLoader(_StepBatches(self.batches, steps, self._share), batch_size=None,
                            num_workers=self.config.workers, prefetch_factor=2, persistent_workers=False)
        yield from loader

    def save(self) -> Path:
        """Write ``checkpoint.pt`` atomically (model, optimiser, schedule, step, RNG); only rank 0 writes. A failed
        write leaves the previous checkpoint and no partial file (a full disk is a ``ValueError`` naming it)."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "step": self.step, "rng": torch.get_rng_state()}
        path = self.folder / CHECKPOINT
        if self.rank == 0:
            partial = path.with_suffix(".tmp")
            try:
                torch.save(state, partial)
            except BaseException as err:
                partial.unlink(missing_ok=True)
                if is_disk_full(err, self.folder):
                    raise disk_full_error(self.folder, str(path), err) from None
                raise
            os.replace(partial, path)
        return path

    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` in the run folder. A file that is not a checkpoint of this model and
        configuration is a ``ValueError`` naming it, raised before anything is loaded, so the trainer is untouched."""
        path = self.folder / CHECKPOINT
        if not path.is_file():
            raise ValueError(f"{self.folder}: no {CHECKPOINT} to resume from (the run stopped before its first "
                             "checkpoint); start it again without --resume, with --overwrite if the folder holds files")
        state = self._read_checkpoint(path)
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        torch.set_rng_state(state["rng"].cpu())

    def _read_checkpoint(self, path: Path) -> dict:
        """The state saved in ``path``, checked against this trainer's model, optimiser, schedule and steps."""
        fix = "resume from the checkpoint.pt a page4d train run wrote, or start a new run"
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (pickle.UnpicklingError, EOFError, RuntimeError) as err:
            raise ValueError(f"{path}: not a training checkpoint (torch cannot read it: {type(err).__name__}); "
                             f"{fix}") from None
        if not isinstance(state, dict) or not set(CHECKPOINT_KEYS) <= set(state):
            held = (f"a dict without {sorted(set(CHECKPOINT_KEYS) - set(state))}" if isinstance(state, dict)
                    else f"a {type(state).__name__}")
            raise ValueError(f"{path}: not a training checkpoint (it holds {held}); {fix}")
        ours, theirs = self.model.state_dict(), state["model"]
        if not isinstance(theirs, dict):
            raise ValueError(f"{path}: not a training checkpoint (its model is a {type(theirs).__name__}); {fix}")
        missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        misshaped = sorted(k for k in set(ours) & set(theirs)
                           if not isinstance(theirs[k], torch.Tensor) or theirs[k].shape != ours[k].shape)
        if missing or unexpected or misshaped:
            raise ValueError(f"{path}: was written for another model configuration: {len(missing)} missing / "
                             f"{len(unexpected)} unexpected / {len(misshaped)} mis-shaped keys (e.g. "
                             f"{(missing or unexpected or misshaped)[0]}); resume with the run's own config.yaml")
        problem = self._optimizer_mismatch(state["optimizer"], state["scheduler"])
        if problem:
            raise ValueError(f"{path}: {problem}; resume with the run's own config.yaml (same train and optim.groups)")
        step = state["step"]
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= self.config.steps:
            raise ValueError(f"{path}: the checkpoint is at step {step!r}, outside 0..steps={self.config.steps}; "
                             f"set steps to at least the checkpoint's step")
        rng = state["rng"]
        if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise ValueError(f"{path}: not a training checkpoint (its rng is not a CPU generator state); {fix}")
        return state

    def _optimizer_mismatch(self, optimizer: Any, scheduler: Any) -> str | None:
        """Why a saved optimiser / schedule state does not fit this trainer's parameter groups, or None."""
        ours = [group["params"] for group in self.optimizer.param_groups]
        try:
            theirs = [list(group["params"]) for group in optimizer["param_groups"]]
            entries, lambdas = dict(optimizer["state"]), list(scheduler["lr_lambdas"])
        except (TypeError, KeyError, ValueError):
            return "its optimiser or schedule state is not one page4d train wrote"
        if [len(g) for g in theirs] != [len(g) for g in ours] or len(lambdas) != len(ours):
            return (f"its optimiser has parameter groups of {[len(g) for g in theirs]} tensors, this config's "
                    f"{[len(g) for g in ours]}")
        for index, param in zip((i for g in theirs for i in g), (p for g in ours for p in g), strict=True):
            # Adam's moments have the parameter's shape; its step count is a scalar.
            for value in entries.get(index, {}).values():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    return f"its optimiser state has shape {list(value.shape)} for a parameter of {list(param.shape)}"
        return None

    def _keep_rows_to_step(self, path: Path) -> None:
        """Drop the rows of the CSV log ``path`` past ``self.step``: a run resumed from an older checkpoint logs
        those steps again, and a kill may have cut the last row short. Rewritten atomically."""
        if not path.is_file():
            return
        with open(path, newline="") as file:
            rows = list(csv.reader(file))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        if "step" not in header:
            raise ValueError(f"{path}: no step column, so not a page4d training log; move it out of the run folder")
        column = header.index("step")
        kept = [row for row in body
                if len(row) == len(header) and row[column].isdigit() and int(row[column]) <= self.step]
        if len(kept) == len(body):
            return
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as file:
            csv.writer(file).writerows([header, *kept])
        os.replace(tmp, path)

    def save_model(self) -> Path:
        """Write ``model/`` (a page4d checkpoint) into a temporary sibling folder swapped into place, replacing an
        older one, so a kill during the save never leaves a half-written model; only rank 0 writes."""
        out = self.folder / MODEL
        self.model.config.trained_layout = "factorised"  # whatever it started from, it now learnt the (t, v) layout
        if self.rank == 0:
            with OutputFolder(out, overwrite=True) as output:
                self.model.save_pretrained(output.path)
        return out

    def _log_eval(self, metrics: dict[str, float]) -> None:
        path = self.folder / EVAL_LOG
        new = not path.is_file()
        with open(path, "a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["step", *EVAL_METRICS])
            if new:
                writer.writeheader()
            writer.writerow({"step": self.step, **metrics})

    def run(self, progress: bool = True) -> Path:
        """Train up to ``config.steps`` (from ``self.step``), logging and checkpointing; returns the model folder.
        With several processes only rank 0 writes, and it logs the terms of its own share of the batch."""
        if self.rank:
            for batch in self.batches_ahead():
                self.train_step(batch)
            return self.folder / MODEL
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / CONFIG).write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        for name in (LOG, EVAL_LOG):
            self._keep_rows_to_step(self.folder / name)
        log_path = self.folder / LOG
        writer = None
        bar = tqdm(total=self.config.steps, initial=self.step, unit="step", desc="train", disable=not progress)
        with open(log_path, "a", newline="") as log:
            for batch in self.batches_ahead():
                values = self.train_step(batch)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}")
                if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                    if writer is None:
                        writer = csv.DictWriter(log, fieldnames=list(values))
                        if log_path.stat().st_size == 0:
                            writer.writeheader()
                    writer.writerow(values)
                    log.flush()
                if self.config.eval_every and (self.step % self.config.eval_every == 0
                                               or self.step == self.config.steps):
                    self._log_eval(evaluate_synthetic(self.model, self.config))
                if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                    self.save()
        bar.close()
        return self.save_model()
