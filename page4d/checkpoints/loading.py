"""Strict loading of a converted state dict into a model, with errors that name every bad key."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from page4d.checkpoints.report import LoadReport


def listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_floating(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``ValueError`` if ``given`` holds non-floating-point tensors for keys whose ``expected`` tensor is
    floating point: cast on load, integer weights would make a silently wrong model (a quantised or mislabelled
    file). Keys only one side has are not looked at."""
    integral = [f"{k} ({given[k].dtype})" for k in sorted(set(expected) & set(given))
                if expected[k].is_floating_point() and not given[k].is_floating_point()]
    if integral:
        raise ValueError(
            f"{source} has {len(integral)} non-floating-point tensors where the model's are floating point: "
            f"{listing(integral, 6)}; the file is corrupt or quantised: export it in float32, float16 or bfloat16"
        )


def check_state_dict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    allow_missing: Mapping[str, str] | None = None,
) -> None:
    """Raise ``ValueError`` unless ``state_dict`` has exactly the model's keys and shapes, floating-point tensors
    where the model's are (any float precision is cast on load) and only finite values.

    ``allow_missing``: model key -> reason, the only keys ``state_dict`` may lack (a converter's
    ``report.initialised``); each must be a key of the model.
    """
    expected = model.state_dict()
    allowed = dict(allow_missing or {})
    foreign = sorted(set(allowed) - set(expected))
    if foreign:
        raise ValueError(f"{source}: keys allowed to be missing are not in the model: {listing(foreign)}")
    missing = sorted(set(expected) - set(state_dict) - set(allowed))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = [
        f"{k} (checkpoint {list(state_dict[k].shape)} vs model {list(expected[k].shape)})"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {listing(unexpected)}")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} mis-shaped keys: {listing(mis_shaped, 6)}")
    if problems:
        raise ValueError(
            f"{source} does not match the model configuration; " + "; ".join(problems)
            + ". Check that the checkpoint family and the model config/preset agree."
        )
    check_floating(expected, state_dict, source)
    # Meta tensors (key lists checked for shape only) have no values to test.
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not v.is_meta and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{source} contains NaN or Inf values in {listing(bad)}; the checkpoint is corrupt")


def load_strict(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    report: LoadReport,
    allow_missing: Mapping[str, str] | None = None,
) -> LoadReport:
    """Check, then copy every tensor into ``model`` (casting to the model's dtype). Returns ``report``.

    ``allow_missing``: model key -> reason, the only keys ``state_dict`` may lack (pass the converter's
    ``report.initialised``); they keep the model's current values, and the load itself stays strict.
    """
    check_state_dict(model, state_dict, report.source, allow_missing)
    model.load_state_dict(completed(model, state_dict, allow_missing), strict=True, assign=False)
    return report


def completed(
    model: nn.Module, state_dict: dict[str, torch.Tensor], allow_missing: Mapping[str, str] | None
) -> dict[str, torch.Tensor]:
    """``state_dict`` plus the model's current tensors for the allowed-missing keys it lacks."""
    current = model.state_dict()
    return {**state_dict, **{k: current[k] for k in allow_missing or {} if k not in state_dict}}
