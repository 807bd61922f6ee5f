"""Sparse global blocks inside the model: identity at init, placement in the schedule, inputs, gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import fused_and_dense, perturbed, twin

from page4d.aggregator import LayerSchedule
from page4d.config import AggregatorConfig, DynamicMaskConfig, SparseGlobalConfig
from page4d.inputs import ForwardInputs
from page4d.model import Page4D
from page4d.presets import preset

IMAGES = torch.rand(1, 2, 3, 3, 28, 42, generator=torch.Generator().manual_seed(5))


def sparse_model(strategy: str, gamma: float = 0.0, **changes) -> Page4D:
    cfg = preset("tiny")
    sparse = SparseGlobalConfig(strategy=strategy, after_pairs=(1, 2), num_landmarks=2, dilation_levels=(1,),
                                num_memory_tokens=4, **changes)
    cfg.aggregator = dataclasses.replace(cfg.aggregator, sparse_global=sparse)
    model = perturbed(cfg, skip="sparse_blocks")
    with torch.no_grad():
        for block in model.aggregator.sparse_blocks:
            block.block.ls1.gamma.fill_(gamma)
            block.block.ls2.gamma.fill_(gamma)
    return model


def plain_twin(model: Page4D) -> Page4D:
    return twin(model, sparse_global=None)


@pytest.mark.parametrize("strategy", ["landmark", "dilated", "memory"])
def test_sparse_blocks_start_as_the_identity(strategy):
    model = sparse_model(strategy)
    with torch.no_grad():
        a, b = model(IMAGES), plain_twin(model)(IMAGES)
    for name in ("pose_enc", "depth", "world_points"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("strategy", ["landmark", "dilated", "memory"])
def test_trained_sparse_blocks_change_outputs_and_fused_equals_dense(strategy):
    model = sparse_model(strategy, gamma=0.5)
    fused, dense = fused_and_dense(model, IMAGES)
    with torch.no_grad():
        plain = plain_twin(model)(IMAGES)
    assert not torch.allclose(fused.pose_enc, plain.pose_enc, atol=1e-4)
    assert torch.allclose(fused.pose_enc, dense.pose_enc, atol=1e-5)
    assert torch.allclose(fused.depth, dense.depth, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (1, ["t0", "v0", "t1", "v1", "s0", "t2", "v2", "s1", "t3", "v3"]),
        (2, ["t0", "t1", "v0", "v1", "s0", "t2", "t3", "v2", "v3", "s1"]),
    ],
)
def test_sparse_steps_follow_the_group_that_completes_their_pair(size, expected):
    cfg = AggregatorConfig(depth=4, aa_block_size=size, sparse_global=SparseGlobalConfig(after_pairs=(1, 2)))
    assert [f"{s.bank[0]}{s.index}" for s in LayerSchedule.alternating(cfg).steps] == expected


def test_keypoints_choose_landmarks_and_bias_the_geometry_stream():
    model = sparse_model("landmark", gamma=0.5, keypoint_bias=True)
    with torch.no_grad():
        for block in model.aggregator.sparse_blocks:
            block.lambda_kpt.fill_(3.0)
        keypoints = torch.zeros(1, 2, 3, 28, 42)
        keypoints[..., :14, :14] = 1.0
        with_kpts = model(IMAGES, ForwardInputs(keypoints=keypoints))
        without = model(IMAGES)
    assert not torch.allclose(with_kpts.depth, without.depth, atol=1e-5)


def test_sparse_with_a_dynamic_mask_prefers_static_landmarks_and_trains():
    cfg = sparse_model("landmark").config
    cfg.aggregator.dynamic_mask = DynamicMaskConfig(
        head="fusion", bias="pose_geo", after_block=0, biased_view_blocks=(1, 2), biased_time_blocks=(2,)
    )
    cfg.validate()
    model = Page4D(cfg).train()
    with torch.no_grad():
        for block in model.aggregator.sparse_blocks:
            block.block.ls1.gamma.fill_(0.5)
            block.block.ls2.gamma.fill_(0.5)
    pred = model(IMAGES)
    (pred.pose_enc.sum() + pred.depth.mean() + pred.dynamic_mask.mean()).backward()
    sparse = {n: p for n, p in model.named_parameters() if "sparse_blocks" in n}
    assert sparse and all(p.grad is not None and p.grad.abs().sum() > 0 for p in sparse.values())


def test_sparse_input_errors():
    with pytest.raises(ValueError, match="keypoints feed the sparse global blocks"):
        Page4D(preset("tiny"))(IMAGES, ForwardInputs(keypoints=torch.zeros(1, 2, 3, 28, 42)))
    with pytest.raises(ValueError, match=r"keypoints must be \[B, T, V, H, W\]"):
        sparse_model("landmark")(IMAGES, ForwardInputs(keypoints=torch.zeros(1, 2, 3, 28, 41)))
    cfg = preset("tiny")
    with pytest.raises(ValueError, match=r"after_pairs \(4,\) outside 0..3"):
        cfg.aggregator = dataclasses.replace(cfg.aggregator, sparse_global=SparseGlobalConfig(after_pairs=(4,)))
        cfg.validate()
