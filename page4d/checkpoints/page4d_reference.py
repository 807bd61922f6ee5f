"""PAGE-4D reference checkpoints (family ``page4d-reference``) -> page4d: variant detection (fin10 / release),
key conversion, model config.

PAGE-4D keeps every VGGT key and adds ``aggregator.spatial_mask_head.*``; the only renames are
VGGT's two block banks. The variant is read from the mask head's keys and shapes:

* fin10: ``alpha_logit`` / ``tau_logit`` scalars and a depthwise ``head0.2`` ``[C, 1, 3, 3]``;
* release: no scalars and a 1×1 ``head0.2`` ``[hidden, C, 1, 1]``.
"""

from __future__ import annotations

from typing import Any

import torch

from page4d.checkpoints import vggt
from page4d.checkpoints.io import detect_family
from page4d.checkpoints.report import LoadReport
from page4d.config import ModelConfig
from page4d.presets import page4d_mask_config

PREFIX = "aggregator.spatial_mask_head."


def detect_variant(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """``fin10`` or ``release``; raises ``ValueError`` naming the keys when neither matches."""
    keys = {k[len(PREFIX) :]: v.shape for k, v in state_dict.items() if k.startswith(PREFIX)}
    if not keys:
        raise ValueError(
            f"{source} has no {PREFIX}* keys: not a PAGE-4D checkpoint (plain VGGT? use the vggt converter)"
        )
    second = keys.get("head0.2.weight")
    scalars = {"alpha_logit", "tau_logit"} & set(keys)
    if scalars == {"alpha_logit", "tau_logit"} and second is not None and tuple(second[1:]) == (1, 3, 3):
        return "fin10"
    if not scalars and second is not None and tuple(second[2:]) == (1, 1):
        return "release"
    raise ValueError(
        f"{source}: unrecognised PAGE-4D mask head (keys {sorted(keys)}, head0.2.weight {list(second or [])}); "
        "expected fin10 (alpha_logit, tau_logit, depthwise head0.2) or release (1x1 head0.2, no scalars)"
    )


def convert(
    state_dict: dict[str, torch.Tensor], source: str = "page4d-reference"
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename a PAGE-4D state dict (either variant) to page4d keys. Pure; the variant is in the report."""
    family = detect_family(state_dict)
    if family != "page4d-reference":
        raise ValueError(f"{source} is not a PAGE-4D checkpoint (detected family {family!r})")
    variant = detect_variant(state_dict, source)
    return vggt.renamed(state_dict, LoadReport(source=source, converter=f"page4d-{variant}"))


def model_config_from_reference(ref: dict[str, Any]) -> ModelConfig:
    """``ModelConfig`` for a reference PAGE-4D setup (the PAGE-4D fixtures' ``config.json`` schema)."""
    cfg = vggt.model_config_from_reference(ref)
    spec = ref["dynamic_mask"]
    variant = {"page4d_fin10": "fin10", "page4d_release": "release"}[ref["variant"]]
    agg = ref["aggregator"]
    mask = page4d_mask_config(variant, agg["depth"], agg.get("mask_hold_start", 0.0), agg.get("mask_hold_end", 0.0))
    mask.after_block = spec["compute_after_frame_block"]
    mask.biased_view_blocks = tuple(spec["masked_global_blocks"])
    if variant == "release":
        mask.release_hidden = next(layer["out"] for layer in spec["head_layers"] if layer["key"] == "head0.2")
        mask.scale = spec["strength_schedule"]["scale"]
    cfg.aggregator.dynamic_mask = mask
    cfg.validate()
    return cfg
