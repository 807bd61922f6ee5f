"""Spreading work over processes with ``torch.distributed``: collectives that differentiate across ranks."""

from page4d.distributed.collectives import exchange, gather, split_sizes

__all__ = ["exchange", "gather", "split_sizes"]
