"""The one place that turns a device name from the command line or a config into a ``torch.device``, and that
reads how much memory a run has taken at its peak."""

from __future__ import annotations

import os
import re
import resource
import sys

import torch

_NAME = re.compile(r"cpu|cuda(:\d+)?")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    A bare ``cuda`` is this process's GPU under torchrun (``LOCAL_RANK``), else GPU 0, and becomes the current
    device. Raises ``ValueError`` for any other name, and when CUDA (or GPU N) is asked for and not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    # torch.device knows many backends page4d does not run on, and raises a RuntimeError for names it does not know.
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"device {name}: unknown; use cpu, cuda, cuda:N or auto")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name}: CUDA is not available on this machine; use cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ValueError(f"device {device}: this machine has {count} GPU(s); use cuda:0 to cuda:{count - 1}")
        torch.cuda.set_device(device)
    return device


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak memory in MB so far: CUDA's allocated peak on a CUDA ``device``, else this process's peak RSS."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
