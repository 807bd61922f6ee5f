"""page4d: feed-forward 4D reconstruction from synchronized multi-view video."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "ModelConfig": "page4d.config", "preset": "page4d.presets", "Page4D": "page4d.model",
    "ForwardInputs": "page4d.inputs", "Predictions": "page4d.outputs",
    "load_pretrained": "page4d.checkpoints.pretrained", "open_input": "page4d.data.sources",
    "reconstruct": "page4d.reconstruction.runner", "WindowPlan": "page4d.reconstruction.runner",
    "Reconstruction": "page4d.reconstruction.record", "GridShard": "page4d.aggregator.grid",
}
"""Public name -> the module that defines it: the model, its inputs and outputs, and the reconstruction pipeline."""

__all__ = [
    "ForwardInputs", "GridShard", "ModelConfig", "Page4D", "Predictions", "Reconstruction", "WindowPlan", "__version__",
    "load_pretrained", "open_input", "preset", "reconstruct",
]

if TYPE_CHECKING:
    from page4d.aggregator.grid import GridShard
    from page4d.checkpoints.pretrained import load_pretrained
    from page4d.config import ModelConfig
    from page4d.data.sources import open_input
    from page4d.inputs import ForwardInputs
    from page4d.model import Page4D
    from page4d.outputs import Predictions
    from page4d.presets import preset
    from page4d.reconstruction.record import Reconstruction
    from page4d.reconstruction.runner import WindowPlan, reconstruct


def __getattr__(name: str) -> object:
    # Imported on first use, so that `import page4d.cli.main` is quick and the command line can install its
    # Ctrl-C and SIGTERM handling before torch (seconds to import) loads.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'page4d' has no attribute {name!r}")
