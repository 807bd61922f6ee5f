"""Shared test helpers: where ``../shared`` lives and how fixture outputs are compared."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """The fixtures' metric: ``max|ours - ref| / max(1, max|ref|)``."""
    ours, ref = ours.detach().double(), ref.double()
    if ours.shape != ref.shape:
        raise AssertionError(f"shape mismatch: ours {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    return float((ours - ref).abs().max() / max(1.0, float(ref.abs().max())))


def load_fixture(name: str) -> dict:
    """``{'config', 'model', 'inputs', 'outputs', 'tolerance'}`` of a fixture folder (by name or path)."""
    folder = Path(name) if Path(name).is_absolute() else FIXTURES / name
    config = json.loads((folder / "config.json").read_text())
    return {
        "config": config,
        "model": load_file(folder / "model.safetensors"),
        "inputs": load_file(folder / "inputs.safetensors"),
        "outputs": load_file(folder / "outputs.safetensors"),
        "tolerance": config.get("tolerance"),
    }


def tolerance(fixture: dict, key: str) -> float:
    """The fixture's threshold for ``key``: per tensor (VGGT fixtures) or one ``abs_scaled`` bound (PAGE-4D)."""
    tol = fixture["tolerance"]
    if "per_tensor" in tol:
        return tol["per_tensor"].get(key, tol["default"])
    return float(tol["abs_scaled"])


def fixture_kind(config: dict) -> str:
    """``vggt``, ``page4d`` (has a ``variant`` field) or ``pi3`` (its own schema), from a fixture's config.json."""
    if "variant" in config:
        return "page4d"
    if "decoder" in config and "Pi3" in config.get("reference", ""):
        return "pi3"
    if "aggregator" in config and "patch_embed" in config:
        return "vggt"
    return "unknown"
