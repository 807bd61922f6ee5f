"""``TrainConfig``: everything a run needs, as dataclasses read from YAML with ``a.b=value`` overrides."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from page4d.data.synthetic import SceneConfig
from page4d.fileio import read_yaml
from page4d.presets import PRESETS, preset
from page4d.train.inputs import InputsConfig


@dataclass
class ParamGroup:
    """Trained parameters matching ``patterns`` (globs with ``{a..b}`` ranges), optimised with these settings."""

    patterns: list[str] = field(default_factory=list)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio · lr``; gradient-norm clipping."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    groups: list[ParamGroup] = field(default_factory=list)
    """Parameter groups with their own learning rate, weight decay and warm-up (PAGE-4D: blocks 10-19 at 1e-5
    warming up over 5 %, the mask head at 2e-5 over 15 %); trained parameters in no group use the values above."""


@dataclass
class DataSource:
    """One training source: ``synthetic`` scenes (``TrainConfig.scene``) or a ``clip`` folder with ground truth
    (``path``; windows of ``scene.num_times`` × ``scene.num_views`` at width ``scene.width``), drawn with
    probability proportional to ``weight``. ``start`` / ``frames`` keep part of a clip's time steps (positions,
    not ids), e.g. to hold its last steps out for evaluation."""

    kind: str = "synthetic"
    path: str | None = None
    weight: float = 1.0
    start: int = 0
    frames: int | None = None


def _default_weights() -> dict[str, float]:
    # VGGT's multitask weights (camera 5, depth 1, points 1) and the dynamic mask at 1.
    return {"camera": 5.0, "depth_conf": 1.0, "depth_reg": 1.0, "depth_grad": 1.0, "point_conf": 1.0,
            "point_reg": 1.0, "point_grad": 1.0, "mask_bce": 1.0, "mask_dice": 1.0}


@dataclass
class TrainConfig:
    """A training run on synthetic scenes (``scene``), from a preset or a checkpoint."""

    model: str = "tiny-mv"
    """Preset to build (random initialisation) when ``init`` is empty."""
    init: str | None = None
    """Checkpoint to start from: a page4d folder, a VGGT / PAGE-4D file or a known Hub id."""
    train: list[str] = field(default_factory=lambda: ["*"])
    """Glob patterns (with ``{a..b}`` ranges) of the parameters to train; everything else is frozen."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    """Synthetic scene ranges; its ``num_times``, ``num_views``, ``height`` and ``width`` size every sample."""
    data: list[DataSource] = field(default_factory=lambda: [DataSource()])
    jitter: float = 0.0
    """Photometric jitter strength (brightness, contrast, saturation in 1 ± jitter); 0 = off."""
    zoom: float = 1.0
    """Largest random zoom-in per sample (K adjusted to match); 1 = off."""
    portrait: float = 0.0
    """Probability that a step's samples are turned a quarter (``quarter_turn``: portrait frames, cameras rolled
    to match; each sample clockwise or not at random). Drawn per step, not per sample: a batch is one shape."""
    inputs: InputsConfig = field(default_factory=InputsConfig)
    """Optional forward inputs made from the ground truth (external masks, coarse cameras, keypoints), so the
    mechanisms that read them train; all off by default (``page4d.train.inputs``)."""
    batch_size: int = 1
    steps: int = 100
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss_weights: dict[str, float] = field(default_factory=_default_weights)
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (CUDA when available; under torchrun each process takes cuda:LOCAL_RANK)."""
    gradient_checkpointing: bool = False
    """Recompute aggregator blocks in the backward pass: less memory, about a third more compute."""
    eval_every: int = 0
    """Evaluate on held-out synthetic scenes every this many steps (0: never)."""
    eval_scenes: int = 2
    log_every: int = 10
    checkpoint_every: int = 50
    grid_processes: int = 1
    """Processes that share each sample's frames (grid parallelism, ``page4d.aggregator.grid``: a (T, V) sample too
    large for one GPU trains across several); the processes of a torchrun launch form a grid of
    ``WORLD_SIZE / grid_processes`` data-parallel groups × ``grid_processes``. 1: data parallelism only."""
    workers: int = 0
    """Background processes that make the next batches while the model trains (0: made in the loop). A batch is a
    function of (seed, step, sample) alone, so the batches are the same with any number of them."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field no run can use, so a bad config fails before a run folder
        exists. Scene sizes are checked against the preset's patch size here; with ``init`` the trainer checks
        them against the loaded model."""
        _need(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _need(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        _need(self.log_every >= 1, "log_every", self.log_every, "an integer >= 1")
        _need(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "an integer >= 1")
        _need(self.workers >= 0, "workers", self.workers, "an integer >= 0 (0: batches made in the training loop)")
        _need(self.grid_processes >= 1, "grid_processes", self.grid_processes, "an integer >= 1 (1: off)")
        _need(self.eval_every >= 0, "eval_every", self.eval_every, "an integer >= 0 (0: never)")
        _need(self.eval_every == 0 or self.eval_scenes >= 1, "eval_scenes", self.eval_scenes,
              "an integer >= 1 when eval_every > 0")
        _need(0 <= self.jitter < 1, "jitter", self.jitter, "a number in [0, 1) (0: off)")
        _need(self.zoom >= 1, "zoom", self.zoom, "a number >= 1 (1: off)")
        _need(0 <= self.portrait <= 1, "portrait", self.portrait, "a probability in [0, 1] (0: off)")
        self.inputs.validate()
        _check_optim(self.optim.lr, self.optim.weight_decay, self.optim.warmup_steps, "optim")
        _need(0 <= self.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", self.optim.min_lr_ratio, "a number in [0, 1]")
        _need(self.optim.grad_clip > 0, "optim.grad_clip", self.optim.grad_clip, "a number > 0")
        for i, group in enumerate(self.optim.groups):
            _check_optim(group.lr, group.weight_decay, group.warmup_steps, f"optim.groups[{i}]")
        for name, weight in self.loss_weights.items():
            _need(isinstance(weight, int | float) and not isinstance(weight, bool) and weight >= 0,
                  f"loss_weights.{name}", weight, "a number >= 0")
        _need(self.scene.num_times >= 1, "scene.num_times", self.scene.num_times, "an integer >= 1")
        _need(self.scene.num_views >= 1, "scene.num_views", self.scene.num_views, "an integer >= 1")
        if self.init is None:
            if self.model not in PRESETS:
                raise ValueError(f"config.model: unknown preset {self.model!r}; use one of {', '.join(sorted(PRESETS))}"
                                 " or set init to a checkpoint")
            check_scene_size(self.scene, preset(self.model).patch_size, f"model {self.model}")
            self.inputs.check_model(preset(self.model))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _build(cls, data, "config")

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
        """The YAML file at ``path`` (defaults when None) with ``key.sub=value`` overrides (values parsed as YAML)."""
        data: dict[str, Any] = {}
        if path is not None:
            data = read_yaml(path, "fix the training config (fields of page4d.train.config.TrainConfig)") or {}
            if not isinstance(data, dict):
                raise ValueError(f"{path}: a training config is a mapping of fields, got {type(data).__name__}")
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"override {item!r}: write it as key=value (e.g. optim.lr=1e-4)")
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            try:
                node[leaf] = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise ValueError(f"override {item!r}: the value is not valid YAML ({' '.join(str(err).split())}); "
                                 "quote it or fix the brackets") from None
        return cls.from_dict(data)


def check_scene_size(scene: SceneConfig, patch_size: int, model: str) -> None:
    """Every sample is ``scene.height × scene.width``, which the model cuts into ``patch_size`` squares."""
    for name in ("height", "width"):
        value = getattr(scene, name)
        _need(value >= patch_size and value % patch_size == 0, f"scene.{name}", value,
              f"a positive multiple of {model}'s patch size {patch_size}")


def _need(ok: bool, name: str, value: Any, what: str) -> None:
    if not ok:
        raise ValueError(f"config.{name}: got {value!r}; use {what}")


def _check_optim(lr: float, weight_decay: float, warmup_steps: int, where: str) -> None:
    _need(lr > 0, f"{where}.lr", lr, "a learning rate > 0")
    _need(weight_decay >= 0, f"{where}.weight_decay", weight_decay, "a number >= 0")
    _need(warmup_steps >= 0, f"{where}.warmup_steps", warmup_steps, "an integer >= 0 (0: no warm-up)")


_KINDS: dict[Any, str] = {str: "a string", str | None: "a string or null", bool: "true or false"}
"""Scalar field types ``_build`` checks, with how an error names them."""


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """A dataclass from nested dicts; unknown keys are errors, lists become tuples where the field is a tuple."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}; known: {sorted(names)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value, list):
                raise ValueError(f"{where}.{name}: expected a list, got {value!r}")
            value = [_build(typing.get_args(hint)[0], item, f"{where}.{name}[{i}]") for i, item in enumerate(value)]
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        elif typing.get_origin(hint) in (dict, list) and not isinstance(value, typing.get_origin(hint)):
            raise ValueError(f"{where}.{name}: expected a {typing.get_origin(hint).__name__}, got {value!r}")
        elif hint is float and isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{where}.{name}: expected a number, got {value!r}") from None
        elif hint in (int, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{where}.{name}: expected a number, got {value!r}")
        elif hint is int and not isinstance(value, int):  # a count: 2.5 steps would fail deep in the loop
            raise ValueError(f"{where}.{name}: expected an integer, got {value!r}")
        elif hint in _KINDS and not isinstance(value, hint):
            raise ValueError(f"{where}.{name}: expected {_KINDS[hint]}, got {value!r}")
        values[name] = value
    return cls(**values)
