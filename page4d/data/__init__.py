"""Data input: VGGT-exact image pre-processing, the multi-view clip record and its on-disk layout."""

from page4d.data.clip import MultiViewClip
from page4d.data.layout import load_clip
from page4d.data.preprocess import ImageTransform, PreprocessedImages, load_rgb, preprocess_images

__all__ = ["ImageTransform", "MultiViewClip", "PreprocessedImages", "load_clip", "load_rgb", "preprocess_images"]
