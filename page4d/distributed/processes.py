"""The processes of a run started by ``torchrun``: joining them, and the small messages they exchange.

``torchrun --nproc_per_node=N`` starts N copies of a command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a
rendezvous address in the environment; :func:`join` turns them into one process group (NCCL on CUDA, gloo on the
CPU). Control messages (a folder name, the window length rank 0 chose, each rank's peak memory, how rank 0's run
ended) are Python objects sent over a separate gloo group, so they never occupy a GPU stream. When a process fails,
torchrun stops the others (SIGTERM, which page4d turns into a clean exit), and its summary names the failed rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from page4d.distributed.collectives import collective

TIMEOUT = timedelta(hours=2)
"""How long a process waits for the others at a collective: long enough for rank 0 to write every export of a long
clip while the others wait for its outcome; a process that dies is noticed at once (torchrun stops the rest)."""


def launched() -> bool:
    """Whether this process is one of several started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Processes:
    """This process's place among the run's processes (rank 0 of 1 when it runs alone)."""

    rank: int = 0
    world: int = 1
    control: ProcessGroup | None = field(default=None, repr=False)
    owned: bool = False
    """Whether :func:`join` started the process group (and :meth:`close` ends it)."""

    @property
    def leader(self) -> bool:
        """Rank 0: the process that owns the output."""
        return self.rank == 0

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (each passes its own; only rank 0's counts)."""
        if self.world == 1:
            return value
        box = [value]
        with collective("rank 0's settings"):
            dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def collect(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order, on every process."""
        if self.world == 1:
            return [value]
        every: list[Any] = [None] * self.world
        with collective("each process's figures"):
            dist.all_gather_object(every, value, group=self.control)
        return every

    def close(self) -> None:
        """End the process group :func:`join` started (gloo's threads otherwise abort the interpreter at exit)."""
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
        self.owned = False

    def wait(self) -> None:
        """Until every process gets here."""
        if self.world > 1:
            with collective("a barrier"):
                dist.barrier(group=self.control)


def join(device: torch.device) -> Processes:
    """Join the process group torchrun describes (once; NCCL when ``device`` is CUDA, else gloo) and return this
    process's place; a process started alone returns rank 0 of 1 without touching ``torch.distributed``."""
    global _joined
    if not launched() and not dist.is_initialized():
        return Processes()
    if _joined is not None and dist.is_initialized():
        return _joined
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    control = dist.new_group(backend="gloo", timeout=TIMEOUT) if dist.get_backend() != "gloo" else None
    _joined = Processes(dist.get_rank(), dist.get_world_size(), control, owned)
    return _joined


def grid_group(size: int) -> ProcessGroup:
    """This process's group of ``size`` consecutive ranks (``rank // size``), among the groups that tile the world:
    the processes that share one sample's frames. Every process makes every group, in the same order."""
    world = dist.get_world_size()
    groups = [dist.new_group(list(range(start, start + size))) for start in range(0, world, size)]
    return groups[dist.get_rank() // size]


_joined: Processes | None = None
"""The processes of this run, once joined (the control group is made once, by every process together)."""
