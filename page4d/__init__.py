"""page4d: feed-forward 4D reconstruction from synchronized multi-view video."""

from page4d.config import ModelConfig, preset
from page4d.model import Page4D
from page4d.outputs import Predictions

__version__ = "0.1.0"

__all__ = ["ModelConfig", "Page4D", "Predictions", "__version__", "preset"]
