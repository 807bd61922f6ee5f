"""Aggregator: patch encoder + special tokens + a layer schedule of time / view / frame / global blocks."""

from page4d.aggregator.aggregator import Aggregator, AggregatorOutput
from page4d.aggregator.mask_head import MaskOutput
from page4d.aggregator.schedule import BlockStep, LayerSchedule

__all__ = ["Aggregator", "AggregatorOutput", "BlockStep", "LayerSchedule", "MaskOutput"]
