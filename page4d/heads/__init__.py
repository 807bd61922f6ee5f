"""Prediction heads: camera (pose encoding), DPT (depth / points) and tracks."""

from page4d.heads.camera import CameraHead
from page4d.heads.dpt import DPTHead
from page4d.heads.track import TrackHead, TrackPrediction

__all__ = ["CameraHead", "DPTHead", "TrackHead", "TrackPrediction"]
