"""page4d's own checkpoint format: a folder with ``model.safetensors`` (the state dict) and ``config.json``
(the full ``ModelConfig``). ``save`` and ``load_into`` round-trip exactly; loading is strict and checked.

The module knows the files, not the model class (``save`` and ``load_into`` take any module with a ``config``), so
``page4d.model`` can delegate to it without an import circle; ``checkpoints.pretrained`` builds the models."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from page4d.checkpoints.io import read_state_dict
from page4d.checkpoints.loading import load_strict
from page4d.checkpoints.report import LoadReport
from page4d.config import ModelConfig
from page4d.fileio import read_json

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CONVERTER = "native"
"""The converter name a native load reports (no key is renamed)."""


ADDED_KEYS: dict[str, tuple[str, str]] = {
    "aggregator.dynamic_mask_head.bias": (
        "aggregator.dynamic_mask_head.convs.4.bias",
        "the fusion head's bias b, which earlier versions did not have: 0 keeps their outputs"),
}
"""Keys that checkpoints of earlier versions lack -> (a key they have whenever the module exists, why the value
is 0)."""


def convert(state_dict: dict[str, torch.Tensor], source: str = CONVERTER) -> tuple[dict[str, torch.Tensor],
                                                                                  LoadReport]:
    """A native state dict as today's model takes it: every key as it is, plus the ``ADDED_KEYS`` an earlier
    version's file lacks (zeros, reported as derived from the key beside them)."""
    state, report = dict(state_dict), LoadReport(source, CONVERTER, {k: k for k in state_dict})
    for key, (beside, why) in ADDED_KEYS.items():
        if key not in state and beside in state:
            state[key] = torch.zeros((), dtype=state[beside].dtype, device=state[beside].device)
            report.mapped[key], report.notes[key] = beside, why
    return state, report


def save(model: nn.Module, folder: Path) -> None:
    """Write ``model`` (a ``Page4D``) into the existing ``folder``: its state dict on the CPU and its config."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights, config = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    save_file(state, str(weights), metadata={"format": "pt", "library": "page4d"})
    config.write_text(json.dumps(model.config.to_dict(), indent=2))
    # safetensors creates its file 0600; give it the mode the umask gives config.json, so others can read it.
    weights.chmod(config.stat().st_mode & 0o777)


def read_config(path: Path) -> ModelConfig:
    """The ``ModelConfig`` in a ``config.json`` (older versions' configs migrated); ``ValueError`` naming the file
    when it is not one."""
    hint = "it should be the config.json that Page4D.save_pretrained writes"
    data = read_json(path, hint)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of model settings, got {type(data).__name__}; {hint}")
    try:
        return ModelConfig.from_dict(data)
    except (ValueError, TypeError) as err:  # unknown fields, impossible or mistyped settings
        raise ValueError(f"{path}: not a valid page4d model config ({err}); {hint}") from None


def read_folder(folder: Path, config: ModelConfig | None = None) -> tuple[Path, ModelConfig]:
    """The weights file of a native folder and the config to build (``config`` instead of its ``config.json`` if
    given); ``ValueError`` naming a missing file."""
    for name in (WEIGHTS_NAME,) if config is not None else (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: no {name} in the folder; a page4d model folder holds {WEIGHTS_NAME} and "
                             f"{CONFIG_NAME} (as save_pretrained writes them); for a single checkpoint, pass the file")
    return folder / WEIGHTS_NAME, config or read_config(folder / CONFIG_NAME)


def load_into(model: nn.Module, weights: Path) -> LoadReport:
    """Load the native ``weights`` file into ``model`` strictly (every key, shape and dtype checked; an earlier
    version's file completed by :func:`convert`)."""
    state, report = convert(read_state_dict(weights), str(weights))
    load_strict(model, state, report)
    return report
