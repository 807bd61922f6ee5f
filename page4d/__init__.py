"""page4d: feed-forward 4D reconstruction from synchronized multi-view video."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["ModelConfig", "Page4D", "Predictions", "__version__", "preset"]

_EXPORTS = {"ModelConfig": "page4d.config", "preset": "page4d.config", "Page4D": "page4d.model",
            "Predictions": "page4d.outputs"}

if TYPE_CHECKING:
    from page4d.config import ModelConfig, preset
    from page4d.model import Page4D
    from page4d.outputs import Predictions


def __getattr__(name: str) -> object:
    # Imported on first use, so that `import page4d.cli.main` is quick and the command line can install its
    # Ctrl-C and SIGTERM handling before torch (seconds to import) loads.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'page4d' has no attribute {name!r}")
