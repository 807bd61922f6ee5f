"""``migrate``: a model config written by an earlier page4d version, in today's terms (``ModelConfig.from_dict``
runs it first), so saved models keep loading with the behaviour they were trained with."""

from __future__ import annotations

from typing import Any

_RENAMED_MASK_HEADS = {"seeds": "fusion"}
"""Mask-head names of earlier versions -> today's (the head's keys and numbers are unchanged)."""


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A ``ModelConfig.to_dict`` of any earlier page4d version in today's terms (a new dict; the input is left
    alone). The one place old names are accepted: nothing else in the library knows them."""
    data = dict(data)
    aggregator = data.get("aggregator")
    if not isinstance(aggregator, dict):
        return data
    aggregator = dict(aggregator)
    mask = aggregator.get("dynamic_mask")
    if isinstance(mask, dict):
        mask = dict(mask)
        if mask.get("head") in _RENAMED_MASK_HEADS:
            mask["head"] = _RENAMED_MASK_HEADS[mask["head"]]
        # A full dump (it names every field of its version) from before ``normalise`` existed: those fusion
        # heads z-scored M̃. A hand-written partial config gets today's default.
        if "dual_weights" in mask and "normalise" not in mask:
            mask["normalise"] = True
        aggregator["dynamic_mask"] = mask
    if "epipolar" in aggregator and aggregator.get("temporal_rope") and "temporal_frequencies" not in aggregator:
        aggregator["temporal_frequencies"] = "spatial"  # a full dump from before the time rotation's own frequencies
    data["aggregator"] = aggregator
    return data

