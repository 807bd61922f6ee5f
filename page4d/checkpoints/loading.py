"""Strict loading of a converted state dict into a model, with errors that name every bad key."""

from __future__ import annotations

import torch
from torch import nn

from page4d.checkpoints.report import LoadReport


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise ``ValueError`` unless ``state_dict`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = [
        f"{k} (checkpoint {list(state_dict[k].shape)} vs model {list(expected[k].shape)})"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} mis-shaped keys: {_listing(mis_shaped, 6)}")
    if problems:
        raise ValueError(
            f"{source} does not match the model configuration; " + "; ".join(problems)
            + ". Check that the checkpoint family and the model config/preset agree."
        )
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{source} contains NaN or Inf values in {_listing(bad)}; the checkpoint is corrupt")


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], report: LoadReport) -> LoadReport:
    """Check, then copy every tensor into ``model`` (casting to the model's dtype). Returns ``report``."""
    check_state_dict(model, state_dict, report.source)
    model.load_state_dict(state_dict, strict=True, assign=False)
    return report
