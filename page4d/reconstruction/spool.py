"""Dense ``[T, ...]`` outputs kept on disk, so that memory does not grow with the length of a clip.

Each array is a raw file appended window by window and read back one time step at a time with plain file
reads (a memory map would keep every page it touched resident in the process). A spool owns a fresh
hidden folder inside the one it is given (``page4d reconstruct`` gives its temporary output folder, so the
files are on the output's disk) and removes it when closed or collected; ``write_npz`` streams spooled and
in-memory arrays into one ``.npz`` step by step.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class StepArray:
    """A ``[T, ...]`` array on disk; ``a[t]``, ``a[t, ...]`` and ``a[start:stop]`` read only those steps, and
    ``write`` replaces one step."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, owner: object = None):
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.owner = owner
        """The ``Spool`` whose folder holds the file, referenced so the file stays while this array is in use."""

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def step_bytes(self) -> int:
        return int(np.prod(self.shape[1:])) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def steps(self, start: int, stop: int) -> np.ndarray:
        """``[stop - start, ...]`` steps read from the file."""
        if not self.path.is_file():
            raise ValueError(f"{self.path}: the spooled array is gone; the reconstruction it belongs to was closed")
        count = (stop - start) * int(np.prod(self.shape[1:]))
        values = np.fromfile(self.path, dtype=self.dtype, count=count, offset=start * self.step_bytes)
        return values.reshape(stop - start, *self.shape[1:])

    def write(self, t: int, values: np.ndarray) -> None:
        """Replace step ``t`` with ``values`` (its shape, cast to the dtype)."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape != self.shape[1:] or not 0 <= t < self.shape[0]:
            raise ValueError(f"{self.path}: cannot write a {values.shape} step at {t} of {self.shape}")
        with open(self.path, "r+b") as file:
            file.seek(t * self.step_bytes)
            values.tofile(file)

    def __getitem__(self, index: int | slice | tuple) -> np.ndarray:
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) else (index, ())
        if isinstance(first, slice):
            start, stop, stride = first.indices(self.shape[0])
            values = self.steps(start, max(start, stop))[::stride]
            return values[(slice(None), *rest)] if rest else values
        t = int(first) + (self.shape[0] if int(first) < 0 else 0)
        if not 0 <= t < self.shape[0]:
            raise IndexError(f"time step {first} out of range for {self.shape[0]} steps")
        values = self.steps(t, t + 1)[0]
        return values[rest] if rest else values

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        values = self.steps(0, self.shape[0])
        return values if dtype is None else values.astype(dtype)


class Spool:
    """Appends ``[n, ...]`` blocks of named arrays to raw files in a new folder inside ``parent`` (created)."""

    def __init__(self, parent: Path):
        Path(parent).mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=".page4d-spool-", dir=parent))
        self.arrays: dict[str, StepArray] = {}
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)

    def remove(self) -> None:
        """Delete the folder and its files (idempotent)."""
        self._finalizer()

    @contextlib.contextmanager
    def removed_on_error(self) -> Iterator[Spool]:
        """Remove the folder if the block raises (no record will own it to close it); keep it otherwise."""
        try:
            yield self
        except BaseException:
            self.remove()
            raise

    def append(self, name: str, block: np.ndarray) -> None:
        """Add the next ``len(block)`` time steps of ``name``."""
        block = np.ascontiguousarray(block)
        array = self.arrays.get(name)
        if array is None:
            path = self.folder / f"{name}.raw"
            array = self.arrays[name] = StepArray(path, (0, *block.shape[1:]), block.dtype, owner=self)
        if block.shape[1:] != array.shape[1:] or block.dtype != array.dtype:
            raise ValueError(f"spool {name}: block {block.shape} {block.dtype} does not extend {array.shape} "
                             f"{array.dtype}")
        with open(array.path, "ab") as file:
            block.tofile(file)
        array.shape = (array.shape[0] + len(block), *array.shape[1:])


def write_npz(path: Path, arrays: dict[str, np.ndarray | StepArray]) -> None:
    """``np.savez`` for a mix of arrays and :class:`StepArray` s, writing the latter step by step.

    Uncompressed: predicted float maps shrink by only 10-30 % under deflate, which runs at tens of MB/s and
    would take longer than the inference on a long clip."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                if isinstance(array, StepArray):
                    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
                              "shape": array.shape}
                    np.lib.format.write_array_header_2_0(member, header)
                    for t in range(len(array)):
                        member.write(array[t].tobytes())
                else:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
