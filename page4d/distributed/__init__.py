"""Spreading work over processes with ``torch.distributed``: collectives that differentiate across ranks."""

from page4d.distributed.collectives import CollectiveError, exchange, gather, split_sizes
from page4d.distributed.processes import Processes, grid_group, join

__all__ = ["CollectiveError", "Processes", "exchange", "gather", "grid_group", "join", "split_sizes"]
