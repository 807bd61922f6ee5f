"""Checkpoint I/O, converters from reference models, strict loading and the Hub."""

from page4d.checkpoints.io import detect_family, read_state_dict
from page4d.checkpoints.loading import check_state_dict, load_strict
from page4d.checkpoints.report import LoadReport

__all__ = ["LoadReport", "check_state_dict", "detect_family", "load_strict", "read_state_dict"]
