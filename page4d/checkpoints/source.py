"""A checkpoint opened lazily: key names, shapes and dtypes first, tensors one at a time on demand.

Conversions plan on meta tensors (no data), then copy each tensor straight into the target model, so
a full-size conversion holds the target model plus one source tensor, not two whole checkpoints.
``.safetensors`` files are read key by key with plain file reads at the offsets of their header (a
memory map would keep every page it touched resident in the process until it is closed); pickled
``.pt`` files are memory-mapped (``weights_only=True``) and, on Linux, each tensor's pages are released
(``madvise(MADV_DONTNEED)``: clean file pages, re-read from disk if touched again) once it is copied.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import struct
import sys
from pathlib import Path

import torch

from page4d.checkpoints.io import read_state_dict

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


_MADV_DONTNEED = 4
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _file_mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges where ``path`` is memory-mapped in this process (Linux ``/proc/self/maps``)."""
    maps = Path("/proc/self/maps")
    if _LIBC is None or not maps.is_file():
        return []
    target = str(path.resolve())
    ranges = []
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def _release_pages(tensor: torch.Tensor, mappings: list[tuple[int, int]]) -> None:
    """Drop the resident pages of a tensor that lies in a read-only file mapping (only then: on anonymous
    memory this would discard live data, so anything outside ``mappings`` is left alone)."""
    if tensor.numel() == 0:
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    for low, high in mappings:
        if low <= start and end <= high:
            first = start - start % mmap.PAGESIZE
            _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(end - first), _MADV_DONTNEED)
            return


class LazySource:
    """Keys, shapes and tensors of one checkpoint file, loaded on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"checkpoint not found: {self.path}")
        self._pickled: dict[str, torch.Tensor] | None = None
        self._prefix = ""
        if self.path.suffix.lower() == ".safetensors":
            self._entries = self._read_header()
            names = list(self._entries)
            if names and all(k.startswith("module.") for k in names):
                self._prefix = "module."
            self._meta = {k[len(self._prefix) :]: (e[0], e[1]) for k, e in self._entries.items()}
        else:
            self._pickled = read_state_dict(self.path)  # memory-mapped, weights only, unwrapped
            self._mappings = _file_mappings(self.path)
            self._meta = {k: (tuple(v.shape), v.dtype) for k, v in self._pickled.items()}

    def _read_header(self) -> dict[str, tuple[tuple[int, ...], torch.dtype, int, int]]:
        """Key -> (shape, dtype, start, end) from the safetensors header (8-byte length, then JSON)."""
        size = self.path.stat().st_size
        try:
            with self.path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > size - 8:
                    raise ValueError("header longer than the file")
                header = json.loads(f.read(length))
            self._data_start = 8 + length
            entries = {}
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                start, end = info["data_offsets"]
                if self._data_start + end > size:
                    raise ValueError(f"{key} ends past the end of the file (truncated)")
                entries[key] = (tuple(info["shape"]), _DTYPES[info["dtype"]], start, end)
            return entries
        except Exception as err:  # corrupt or truncated files raise several types
            raise ValueError(f"{self.path}: cannot read checkpoint ({type(err).__name__}: {err})") from err

    def keys(self) -> list[str]:
        return list(self._meta)

    def meta_state(self) -> dict[str, torch.Tensor]:
        """Every key as a meta tensor of its shape and dtype (no data)."""
        return {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype) in self._meta.items()}

    def load(self, key: str) -> torch.Tensor:
        """One tensor, on the CPU."""
        if self._pickled is not None:
            return self._pickled[key]
        shape, dtype, start, end = self._entries[self._prefix + key]
        with self.path.open("rb") as f:
            f.seek(self._data_start + start)
            data = bytearray(f.read(end - start))
        if len(data) != end - start:
            raise ValueError(f"{self.path}: {key} is truncated")
        if not data:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(data, dtype=dtype).reshape(shape)

    def release(self, key: str) -> None:
        """Done with ``key``: release a memory-mapped tensor's pages (plain reads own nothing to release)."""
        if self._pickled is not None:
            _release_pages(self._pickled[key], self._mappings)

    def with_values(self, keys: set[str]) -> dict[str, torch.Tensor]:
        """The meta state with real tensors for ``keys`` (to compute derived targets from a few sources)."""
        state = self.meta_state()
        state.update({k: self.load(k) for k in keys})
        return state
