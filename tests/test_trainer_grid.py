"""Grid-parallel training: each sample's frames spread over 2 CPU processes (gloo), alone and combined with data
parallelism (2 groups × 2 processes), makes the same gradient and update as 1 process on the whole batch.

The grids are split by time (3 steps over 2 processes: 2 + 1) for view blocks and by view for time blocks, so the
tokens cross processes both ways in the forward pass, and the gradients back through the same exchanges.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from page4d.data.synthetic import SceneConfig
from page4d.train.config import TrainConfig
from page4d.train.trainer import Trainer

pytestmark = [pytest.mark.ddp, pytest.mark.slow]
SCENE = SceneConfig(num_times=3, num_views=2, height=28, width=42)


def _config(batch: int, grid: int) -> TrainConfig:
    return TrainConfig(model="tiny-mv", scene=SCENE, batch_size=batch, steps=1, grid_processes=grid)


def _worker(rank: int, world: int, batch: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = Trainer(_config(batch, grid=2), out)
        logged = trainer.train_step()
        grads = {f"grad.{n}": p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
        torch.save({**trainer.model.state_dict(), **grads, "loss": torch.tensor(logged["loss"])},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("world", "batch"), [(2, 1), (4, 2)])
def test_grid_parallel_step_equals_one_process_on_the_whole_batch(world, batch, tmp_path):
    mp.spawn(_worker, args=(world, batch, free_port(), str(tmp_path)), nprocs=world, join=True)
    single = Trainer(_config(batch, grid=1), tmp_path / "single")
    loss = single.train_step()["loss"]
    noise = 1e-6 * max(p.grad.abs().max().item() for p in single.model.parameters() if p.grad is not None)
    for rank in range(world):
        parallel = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        if rank % 2 == 0 and world == 2:
            assert parallel["loss"].item() == pytest.approx(loss, rel=1e-5)
        compared = 0
        for name, param in single.model.named_parameters():
            if param.grad is None:
                continue
            torch.testing.assert_close(parallel[f"grad.{name}"], param.grad, rtol=1e-4, atol=noise,
                                       msg=lambda m, name=name, rank=rank: f"rank {rank} {name}: {m}")
            clear = param.grad.abs() > 100 * noise  # Adam's first step: ±lr wherever the gradient is clearly there
            torch.testing.assert_close(parallel[name][clear], param.detach()[clear], rtol=1e-5, atol=1e-7, msg=name)
            compared += int(clear.sum())
        assert compared > 10_000


def test_grid_processes_must_tile_the_launch(tmp_path):
    with pytest.raises(ValueError, match="grid_processes 4 share each group's 1 samples of 3 × 2 frames"):
        _grid_trainer(world=4, grid=4, tmp_path=tmp_path)


def _grid_trainer(world: int, grid: int, tmp_path) -> None:
    """A trainer as rank 0 of ``world`` processes would build it, without starting any (the checks come first)."""
    from unittest import mock

    with mock.patch.object(dist, "is_initialized", return_value=True), \
            mock.patch.object(dist, "get_rank", return_value=0), \
            mock.patch.object(dist, "get_world_size", return_value=world):
        Trainer(_config(1, grid), tmp_path)
