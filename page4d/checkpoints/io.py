"""Reading checkpoints from disk: ``.safetensors`` or pickled ``.pt`` / ``.pth`` (weights only).

Accepts raw state dicts, ``{'model': ...}`` / ``{'state_dict': ...}`` wrappers and DDP ``module.``
prefixes. Never unpickles arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

_WRAPPERS = ("model", "state_dict", "module")


def unwrap_state_dict(obj: object, origin: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Strip wrapper dicts and ``module.`` prefixes; every value must be a tensor."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ValueError(
                f"{origin}: found no tensors (top-level keys {sorted(obj)[:8]}); expected a state dict or a "
                "{'model': state_dict} wrapper"
            )
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"{origin}: expected a dict of tensors, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{origin}: non-tensor entries {bad[:5]}; pass a plain state dict")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or ``.pt`` / ``.pth`` / ``.bin`` onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        raise ValueError(f"{path}: unknown checkpoint extension {suffix!r}; use .safetensors, .pt or .pth")
    try:
        if suffix == ".safetensors":
            obj = load_file(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # corrupt or truncated files raise many different types
        raise ValueError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err}); the file is truncated or "
                         "not a checkpoint: download or export it again") from err
    return unwrap_state_dict(obj, str(path))


def detect_family(keys: set[str] | list[str]) -> str:
    """Which model family a state dict belongs to: ``native`` (page4d's own keys), ``vggt``, ``page4d-reference``
    (the PAGE-4D reference code's checkpoints), ``pi3`` or ``unknown``. Each family but ``unknown`` is the name
    of its converter in ``page4d.checkpoints.composition.CONVERTERS``."""
    keys = set(keys)
    if any(k.startswith("aggregator.time_blocks.") for k in keys):
        return "native"
    if any(k.startswith("aggregator.spatial_mask_head.") for k in keys):
        return "page4d-reference"
    if any(k.startswith("aggregator.frame_blocks.") for k in keys):
        return "vggt"
    if any(k.startswith("decoder.") for k in keys) and any(k.startswith("encoder.") for k in keys):
        return "pi3"
    return "unknown"
