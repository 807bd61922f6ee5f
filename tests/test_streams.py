"""Dual token streams: exact at λ = 0 (shared and branched weights), pose stream -> camera, geo -> dense heads."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import fused_and_dense, perturbed, twin

from page4d.config import DynamicMaskConfig
from page4d.model import Page4D
from page4d.presets import preset

IMAGES = torch.rand(1, 2, 3, 3, 28, 42, generator=torch.Generator().manual_seed(4))


def dual_model(weights: str = "shared", lambdas=(0.0, 0.0, 0.0, 0.0), streams: str = "dual") -> Page4D:
    cfg = preset("tiny")
    cfg.aggregator.dynamic_mask = DynamicMaskConfig(
        head="fusion", bias="pose_geo", after_block=0, biased_view_blocks=(2, 3), biased_time_blocks=(2, 3),
        streams=streams, dual_from_block=2, dual_weights=weights,
    )
    cfg.validate()
    model = perturbed(cfg)
    with torch.no_grad():
        agg = model.aggregator
        for name in ("time", "view"):  # branched copies start equal to the shared blocks
            copies = getattr(agg, f"pose_{name}_blocks", {})
            for i, block in copies.items():
                block.load_state_dict(getattr(agg, f"{name}_blocks")[int(i)].state_dict())
        bias = agg.mask_bias
        for lam, value in zip((bias.lambda_pose, bias.lambda_geo, bias.lambda_pose_t, bias.lambda_geo_t), lambdas,
                              strict=True):
            lam.fill_(value)
    return model


def mask_twin(model: Page4D, **mask_changes) -> Page4D:
    return twin(model, dynamic_mask=dataclasses.replace(model.config.aggregator.dynamic_mask, **mask_changes))


FIELDS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "dynamic_mask")


@pytest.mark.parametrize("weights", ["shared", "branched"])
def test_dual_streams_at_zero_lambda_equal_the_single_stream_exactly(weights):
    model = dual_model(weights)
    single = mask_twin(model, streams="shared", dual_weights="shared")
    with torch.no_grad():
        a, b = model(IMAGES), single(IMAGES)
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_branched_weights_add_pose_block_copies_from_the_split():
    keys = Page4D(dual_model("branched").config).state_dict().keys()
    assert {k.split(".")[2] for k in keys if k.startswith("aggregator.pose_time_blocks.")} == {"2", "3"}
    assert {k.split(".")[2] for k in keys if k.startswith("aggregator.pose_view_blocks.")} == {"2", "3"}
    assert not any(k.startswith("aggregator.pose_") for k in Page4D(dual_model("shared").config).state_dict())


def test_camera_reads_the_pose_stream_and_dense_heads_the_geometry_stream():
    """Only λ_geo set: the pose stream is unbiased, so cameras equal the unbiased model's and depth does not;
    only λ_pose set: the reverse."""
    with torch.no_grad():
        unbiased = dual_model()(IMAGES)
        geo_only = dual_model(lambdas=(0.0, 4.0, 0.0, 4.0))(IMAGES)
        pose_only = dual_model(lambdas=(4.0, 0.0, 4.0, 0.0))(IMAGES)
    rounding = 1e-6
    assert (geo_only.pose_enc - unbiased.pose_enc).abs().max() <= rounding
    assert (geo_only.depth - unbiased.depth).abs().max() > 50 * rounding
    assert (pose_only.pose_enc - unbiased.pose_enc).abs().max() > 1e-2
    assert (pose_only.depth - unbiased.depth).abs().max() <= rounding


@pytest.mark.parametrize("weights", ["shared", "branched"])
def test_dual_fused_equals_dense(weights):
    model = dual_model(weights, lambdas=(1.5, 2.0, -1.0, 0.5))
    fused, dense = fused_and_dense(model, IMAGES)
    for name in FIELDS:
        assert torch.allclose(getattr(fused, name), getattr(dense, name), atol=1e-5, rtol=1e-5), name


def test_branched_pose_blocks_and_lambdas_get_gradients():
    model = dual_model("branched").train()
    pred = model(IMAGES)
    torch.manual_seed(0)
    sum((x * torch.randn_like(x)).sum() for x in (*pred.pose_enc_list, pred.depth, pred.dynamic_mask)).backward()
    named = dict(model.named_parameters())
    branched = [n for n in named if n.startswith("aggregator.pose_")]
    assert branched
    missing = [n for n in branched + [n for n in named if "mask_bias" in n]
               if named[n].grad is None or not named[n].grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bias": "page4d", "head": "release", "biased_time_blocks": ()}, "dual streams need bias='pose_geo'"),
        ({"dual_from_block": 7}, "dual_from_block 7 is outside 0..3"),
    ],
)
def test_bad_dual_configs(changes, message):
    cfg = dual_model().config
    with pytest.raises(ValueError, match=message):
        cfg.aggregator.dynamic_mask = dataclasses.replace(cfg.aggregator.dynamic_mask, **changes)
        cfg.validate()
