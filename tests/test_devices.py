"""Device names from the command line and configs."""

from __future__ import annotations

import pytest
import torch

from page4d.devices import resolve_device


def test_device_names_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu", 0
                                                   if torch.cuda.is_available() else None)


def test_cuda_without_cuda_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available on this machine; use cpu"):
        resolve_device("cuda:1")
