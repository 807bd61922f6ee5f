"""Grid parallelism: one forward pass spread over 2 and 3 CPU processes (gloo) equals the single-process pass.

Every case runs with weights perturbed away from their initial values, so that each mechanism that starts as the
identity (λ biases, LayerScale-0 sparse blocks, temporal scales, branched pose blocks) is really active: a sharded
mechanism that dropped its keys from other ranks, or mixed up which frames a rank holds, changes the outputs.
Grids are chosen so that T or V does not divide by the number of processes, and so that some layouts have to
gather keys (T = 1, V = 1, fewer steps than processes).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from page4d import ForwardInputs, Page4D
from page4d.aggregator.grid import BATCH, TIME, VIEW, FrameGrid, GridShard
from page4d.config import EpipolarConfig, SparseGlobalConfig, TokenReductionConfig
from page4d.presets import preset

pytestmark = [pytest.mark.ddp, pytest.mark.slow]
HEIGHT, WIDTH = 28, 42


def _everything(strategy: str, **sparse) -> Page4D:
    """tiny-mv (fusion mask, pose/geo biases in both banks, temporal RoPE) with branched dual streams, the
    epipolar prior, token reduction and a sparse block of ``strategy`` with the keypoint bias."""
    cfg = preset("tiny-mv")
    agg = cfg.aggregator
    agg.dynamic_mask = dataclasses.replace(agg.dynamic_mask, streams="dual", dual_from_block=2,
                                           dual_weights="branched")
    agg.sparse_global = SparseGlobalConfig(strategy=strategy, after_pairs=(1,), num_landmarks=3, keypoint_bias=True,
                                           dilation_levels=(1, 2), num_memory_tokens=4, **sparse)
    agg.epipolar = EpipolarConfig(view_blocks=(1, 3), band_px=10.0, chunk_size=7)
    agg.token_reduction = TokenReductionConfig(factor=2, time_blocks=(2,), view_blocks=(2,))
    cfg.validate()
    return Page4D(cfg)


def _model(name: str) -> Page4D:
    torch.manual_seed(0)
    if name.startswith("everything-"):
        strategy, _, pool = name.removeprefix("everything-").partition("-")
        model = _everything(strategy, **({"landmark_pool": pool} if pool else {}))
    else:
        model = Page4D(preset(name))
    with torch.no_grad():
        for key, param in model.named_parameters():
            param.add_(torch.randn_like(param) * 0.05)
            if "lambda" in key or "temporal_rope" in key or key.endswith("gamma"):  # strong enough to matter
                param.copy_(torch.randn_like(param).sign() * 0.5 + torch.randn_like(param) * 0.1)
    return model.eval()


def _cameras(t: int, v: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Intrinsics and world-to-camera extrinsics of a ring of ``v`` cameras, moving a little with ``t``."""
    k = torch.tensor([[30.0, 0, WIDTH / 2], [0, 30.0, HEIGHT / 2], [0, 0, 1]]).expand(1, t, v, 3, 3)
    angle = torch.arange(v)[None, :] * (2 * torch.pi / v) + 0.05 * torch.arange(t)[:, None]
    c, s, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    rot = torch.stack([c, zero, -s, zero, one, zero, s, zero, c], -1).view(1, t, v, 3, 3)
    centre = torch.stack([3 * s, zero, -3 * c], -1).view(1, t, v, 3, 1)
    return k.clone(), torch.cat([rot, -rot @ centre], dim=-1)


def _inputs(name: str, t: int, v: int) -> ForwardInputs | None:
    if not name.startswith("everything-"):
        return None
    gen = torch.Generator().manual_seed(1)
    mask = (torch.rand(1, t, v, HEIGHT, WIDTH, generator=gen) > 0.7).float()
    keypoints = torch.rand(1, t, v, HEIGHT, WIDTH, generator=gen)
    return ForwardInputs(external_mask=mask, keypoints=keypoints, camera_priors=_cameras(t, v))


CASES = [  # (model, attention plan, T, V)
    ("tiny-mv", "factorised", 3, 4),
    ("everything-landmark", "factorised", 3, 4),
    ("everything-landmark-clip", "factorised", 4, 3),
    ("everything-dilated", "factorised", 5, 3),
    ("everything-memory", "factorised", 3, 5),
    ("everything-landmark", "factorised", 2, 5),  # fewer steps than 3 processes: view blocks gather keys
    ("tiny-mv", "factorised", 5, 1),  # one camera: time blocks gather keys
    ("tiny-page4d-fin10", "set", 2, 3),  # one set of T·V frames: global attention gathers keys
    ("tiny-page4d-release", "per-step", 3, 2),
    ("tiny", "factorised", 1, 5),  # VGGT's input: T = 1
]


def _predict(case: tuple, shard: GridShard | None) -> dict[str, torch.Tensor]:
    name, plan, t, v = case
    images = torch.rand(1, t, v, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    pred = _model(name).infer(images, _inputs(name, t, v), attention=plan, shard=shard)
    return {f.name: getattr(pred, f.name) for f in dataclasses.fields(pred)
            if isinstance(getattr(pred, f.name), torch.Tensor)}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = [_predict(case, GridShard()) for case in CASES]
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single() -> list[dict[str, torch.Tensor]]:
    return [_predict(case, None) for case in CASES]


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_forward_equals_one_process(world, single, tmp_path):
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        sharded = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for case, one, many in zip(CASES, single, sharded, strict=True):
            assert one.keys() == many.keys() and {"depth", "world_points", "extrinsic"} <= one.keys(), case
            for key in one:
                torch.testing.assert_close(many[key], one[key], rtol=1e-4, atol=1e-5,
                                           msg=lambda m, c=case, k=key, r=rank: f"{c} {k}, rank {r}: {m}")


def test_mechanisms_change_the_outputs():
    """The perturbed mechanisms are active: the sparse block, the biases and the epipolar prior each change the
    prediction (so the sharded comparison above covers them)."""
    images = torch.rand(1, 3, 4, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    inputs = _inputs("everything-landmark", 3, 4)
    model = _model("everything-landmark")
    base = model.infer(images, inputs).depth
    for name, change in (
        ("sparse block", lambda m: m.aggregator.sparse_blocks[0].block.ls1.gamma.zero_()),
        ("λ biases", lambda m: [p.zero_() for n, p in m.aggregator.mask_bias.named_parameters()]),
        ("temporal RoPE", lambda m: m.aggregator.temporal_rope.scale.zero_()),
    ):
        other = _model("everything-landmark")
        with torch.no_grad():
            change(other)
        assert (other.infer(images, inputs).depth - base).abs().max() > 1e-4, name
    no_priors = dataclasses.replace(inputs, camera_priors=None)
    assert (model.infer(images, no_priors).depth - base).abs().max() > 1e-4, "epipolar prior"


def test_frame_grid_splits():
    """Which axis each layout is split along, which layouts gather keys, and the refusal when neither axis has a
    frame for every process."""

    @dataclasses.dataclass(frozen=True)
    class Rank(GridShard):  # a process of a group of ``world``, without a process group
        world: int = 2

        def position(self) -> tuple[int, int]:
            return 0, self.world

    def splits(t: int, v: int, world: int, b: int = 1) -> dict[str, tuple]:
        frames = FrameGrid(b, t, v, Rank(world=world))
        return {k: (s.axis, s.sizes, s.gathered) for k in ("time", "view", "frame", "global")
                for s in [frames.split(k)]}

    assert splits(5, 3, 2) == {"time": (VIEW, (2, 1), False), "view": (TIME, (3, 2), False),
                               "frame": (TIME, (3, 2), False), "global": (TIME, (3, 2), True)}
    assert splits(5, 1, 3)["time"] == (TIME, (2, 2, 1), True)  # one camera: time sequences span processes
    assert splits(1, 4, 2) == {"time": (VIEW, (2, 2), False), "view": (VIEW, (2, 2), True),
                               "frame": (VIEW, (2, 2), False), "global": (VIEW, (2, 2), True)}
    assert splits(2, 5, 3)["view"] == (VIEW, (2, 2, 1), True)
    # independent sets (the per-step plan's steps): split, never exchanged
    assert set(splits(1, 2, 3, b=4).values()) == {(BATCH, (2, 1, 1), False)}
    assert FrameGrid(1, 3, 2).split("time") == FrameGrid(1, 3, 2).split("global")  # one process: all local
    assert not FrameGrid(1, 3, 2).sharded and not FrameGrid(1, 3, 2).split("global").gathered
    with pytest.raises(ValueError, match="needs at least 4 time steps, cameras or independent sets .*= 1, 3, 2"):
        FrameGrid(1, 3, 2, Rank(world=4))
