"""``TrainConfig``: everything a run needs, as dataclasses read from YAML with ``a.b=value`` overrides."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from page4d.data.synthetic import SceneConfig


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
            try:
                data = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as err:
                raise ValueError(f"{path}: cannot read the training config ({err})") from None
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
            node[leaf] = yaml.safe_load(value)
        return cls.from_dict(data)


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
        values[name] = value
    return cls(**values)
