"""A checkpoint opened lazily: key names, shapes and dtypes first, tensors one at a time on demand.

Conversions plan on meta tensors (no data), then copy each tensor straight into the target model, so
a full-size conversion holds the target model plus one source tensor, not two whole checkpoints.
``.safetensors`` files are read key by key; pickled ``.pt`` files are memory-mapped
(``weights_only=True``), their pages read as each tensor is copied.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from page4d.checkpoints.io import read_state_dict

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class LazySource:
    """Keys, shapes and tensors of one checkpoint file, loaded on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"checkpoint not found: {self.path}")
        self._pickled: dict[str, torch.Tensor] | None = None
        self._prefix = ""
        if self.path.suffix.lower() == ".safetensors":
            try:
                self._file = safe_open(self.path, "pt")
                names = list(self._file.keys())
                self._meta = {
                    k: (tuple(self._file.get_slice(k).get_shape()), _DTYPES[self._file.get_slice(k).get_dtype()])
                    for k in names
                }
            except Exception as err:  # corrupt or truncated headers raise several types
                raise ValueError(f"{self.path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
            if names and all(k.startswith("module.") for k in names):
                self._prefix = "module."
                self._meta = {k[len("module.") :]: v for k, v in self._meta.items()}
        else:
            self._pickled = read_state_dict(self.path)  # memory-mapped, weights only, unwrapped
            self._meta = {k: (tuple(v.shape), v.dtype) for k, v in self._pickled.items()}

    def keys(self) -> list[str]:
        return list(self._meta)

    def meta_state(self) -> dict[str, torch.Tensor]:
        """Every key as a meta tensor of its shape and dtype (no data)."""
        return {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype) in self._meta.items()}

    def load(self, key: str) -> torch.Tensor:
        """One tensor, on the CPU."""
        if self._pickled is not None:
            return self._pickled[key]
        return self._file.get_tensor(self._prefix + key)

    def with_values(self, keys: set[str]) -> dict[str, torch.Tensor]:
        """The meta state with real tensors for ``keys`` (to compute derived targets from a few sources)."""
        state = self.meta_state()
        state.update({k: self.load(k) for k in keys})
        return state
