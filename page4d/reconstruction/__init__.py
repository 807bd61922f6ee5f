"""A reconstruction on disk and in memory, and how it is computed over long clips (windows + Sim(3) stitching)."""

from page4d.reconstruction.record import Reconstruction

__all__ = ["Reconstruction"]
