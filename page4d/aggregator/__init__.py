"""Aggregator: patch encoder + special tokens + a layer schedule of time / view / frame / global blocks."""

from page4d.aggregator.aggregator import Aggregator
from page4d.aggregator.schedule import BlockStep, LayerSchedule

__all__ = ["Aggregator", "BlockStep", "LayerSchedule"]
