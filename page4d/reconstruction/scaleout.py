"""A reconstruction over several processes (``torchrun``): whole windows per process, or one window's frame grid
spread over all of them.

* ``windows``: window i runs on rank ``i mod N``; each process writes its windows' predictions to a folder every
  process sees (the output's spool), and rank 0 reads them back in order and stitches them exactly as a single
  process would. Memory per process is one window; wall time falls with N while there are windows to share.
* ``grid``: every process runs every window together: the model spreads each window's (t, v) grid over them
  (``page4d.aggregator.grid``), so activation memory per process falls about as 1/N, and rank 0 stitches.
* ``auto``: ``grid`` when one window covers the clip, else ``windows``.

Only rank 0 returns a reconstruction and writes; the other processes return None.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from page4d.distributed.processes import Processes
from page4d.reconstruction.stitch import Prediction

SHARD_MODES = ("auto", "windows", "grid")
Split = Literal["windows", "grid"]


def resolve_shard(mode: str, processes: Processes, windows: int) -> Split | None:
    """How the processes share the work: None when one process runs alone, else ``windows`` or ``grid``."""
    if mode not in SHARD_MODES:
        raise ValueError(f"shard {mode!r}: choose one of {', '.join(SHARD_MODES)}")
    if processes.world == 1:
        return None
    if mode == "auto":
        return "grid" if windows == 1 else "windows"
    return mode


def own_windows(count: int, processes: Processes) -> range:
    """Indices of the windows this process predicts under ``windows`` sharing (round robin)."""
    return range(processes.rank, count, processes.world)


class WindowFiles:
    """Window predictions handed from the process that made them to rank 0, one ``.npz`` file per window in
    ``folder`` (written aside and renamed, so a file is either whole or absent); each is removed once read."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _path(self, index: int) -> Path:
        return self.folder / f"window_{index:05d}.npz"

    def write(self, index: int, arrays: dict[str, np.ndarray], pixels: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        aside = self.folder / f".window_{index:05d}.{os.getpid()}.npz"
        with open(aside, "wb") as file:
            np.savez(file, images=pixels, **arrays)
        os.replace(aside, self._path(index))

    def read(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        path = self._path(index)
        if not path.is_file():
            raise ValueError(f"the predictions of window {index} are missing from {self.folder}: every process must "
                             "see the output's disk (on several machines, put -o on a shared file system)")
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        path.unlink()
        return arrays, arrays.pop("images")


def share_windows(
    split: Split | None, processes: Processes, predict: Callable[[range], Prediction], windows: list[range],
    spool: Path | None, progress: bool,
) -> WindowFiles | None:
    """The work every process does before rank 0 stitches: under ``windows`` sharing each predicts its own windows
    into files (returned, for rank 0 to read); under ``grid`` sharing the other processes run every window with
    rank 0 (which then stitches them as it predicts)."""
    if split == "grid" and not processes.leader:
        for times in windows:
            predict(times)
    if split != "windows":
        return None
    folder = processes.share(None if not processes.leader else (
        Path(tempfile.mkdtemp(prefix="page4d-windows-")) if spool is None else Path(spool) / "windows"))
    files = WindowFiles(folder)
    mine = own_windows(len(windows), processes)
    bar = tqdm(mine, unit="window", desc=f"rank 0's windows ({len(mine)} of {len(windows)})",
               disable=not (progress and processes.leader))
    for index in bar:
        files.write(index, *predict(windows[index]))
    processes.wait()
    return files
