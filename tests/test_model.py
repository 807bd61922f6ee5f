"""Model-level properties: shapes, gradients, the 5-D / 6-D equivalence, schedules, input validation."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import load_fixture, needs_shared

from page4d.aggregator import LayerSchedule
from page4d.aggregator.tokens import special_tokens
from page4d.checkpoints import vggt
from page4d.checkpoints.loading import load_strict
from page4d.config import AggregatorConfig, ModelConfig
from page4d.model import Page4D
from page4d.presets import PRESETS, preset


@pytest.fixture(scope="module")
def track_model() -> Page4D:
    """The dinov2 fixture's re-randomised weights (non-trivial everywhere), track head included."""
    fx = load_fixture("vggt_dinov2_tiny")
    model = Page4D(vggt.model_config_from_reference(fx["config"]))
    load_strict(model, *vggt.convert(fx["model"]))
    return model.eval()


@needs_shared
def test_prediction_shapes_and_finiteness(track_model):
    b, t, v, h, w = 1, 2, 3, 70, 98
    images = torch.rand(b, t, v, 3, h, w)
    query = torch.tensor([[[20.0, 30.0], [50.0, 40.0]]])
    with torch.no_grad():
        pred = track_model(images, query_points=query)
    expected = {
        "pose_enc": (b, t, v, 9), "extrinsic": (b, t, v, 3, 4), "intrinsic": (b, t, v, 3, 3),
        "depth": (b, t, v, h, w, 1), "depth_conf": (b, t, v, h, w), "world_points": (b, t, v, h, w, 3),
        "world_points_conf": (b, t, v, h, w), "track": (b, t, v, 2, 2), "track_vis": (b, t, v, 2),
        "track_conf": (b, t, v, 2),
    }
    for name, shape in expected.items():
        value = getattr(pred, name)
        assert tuple(value.shape) == shape, name
        assert torch.isfinite(value).all(), name
    assert len(pred.pose_enc_list) == 4 and torch.equal(pred.pose_enc_list[-1], pred.pose_enc)


@needs_shared
def test_every_parameter_gets_a_gradient(track_model):
    model = Page4D(track_model.config).train()
    model.load_state_dict(track_model.state_dict())
    images = torch.rand(1, 2, 2, 3, 70, 98)
    pred = model(images, query_points=torch.tensor([[[20.0, 30.0], [60.0, 40.0]]]))
    torch.manual_seed(0)
    loss = sum(
        (x * torch.randn_like(x)).sum()
        for x in (*pred.pose_enc_list, pred.depth, pred.depth_conf, pred.world_points, pred.world_points_conf,
                  *pred.track_list, pred.track_vis, pred.track_conf)
    )
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == ["aggregator.patch_embed.mask_token"]


@needs_shared
def test_six_d_with_one_time_step_equals_five_d_bit_for_bit(track_model):
    images = torch.rand(2, 3, 3, 70, 98)
    query = torch.rand(2, 4, 2) * 60
    with torch.no_grad():
        five, six = track_model(images, query_points=query), track_model(images[:, None], query_points=query)
    for field in dataclasses.fields(five):
        a, b = getattr(five, field.name), getattr(six, field.name)
        if a is None:
            assert b is None, field.name
            continue
        pairs = zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]
        for x, y in pairs:
            assert torch.equal(x, y), field.name


@needs_shared
def test_vggt_global_schedule_equals_ours_at_one_time_step_only(track_model):
    """Banks run as frame / global attention (VGGT on all T·V frames) == time / view attention iff T = 1."""
    cfg = dataclasses.replace(track_model.config)
    cfg.aggregator = dataclasses.replace(cfg.aggregator, bank_kinds={"time": "frame", "view": "global"})
    global_model = Page4D(cfg).eval()
    global_model.load_state_dict(track_model.state_dict())
    keep = range(cfg.aggregator.depth)
    with torch.no_grad():
        one = torch.rand(1, 1, 3, 3, 70, 98)
        ours, theirs = track_model.aggregator(one, keep).pose_entries, global_model.aggregator(one, keep).pose_entries
        assert all(torch.equal(a, b) for a, b in zip(ours.values(), theirs.values(), strict=True))
        two = torch.rand(1, 2, 2, 3, 70, 98)
        ours = track_model.aggregator(two, keep).pose_entries
        theirs = global_model.aggregator(two, keep).pose_entries
    assert not torch.allclose(ours[3], theirs[3], atol=1e-3)


def test_only_requested_entries_are_kept():
    cfg = preset("tiny")
    cfg.aggregator = dataclasses.replace(cfg.aggregator, depth=6)
    cfg.depth_head = dataclasses.replace(cfg.depth_head, intermediate_layer_idx=(1, 2, 3, 5))
    cfg.point_head = dataclasses.replace(cfg.point_head, intermediate_layer_idx=(1, 2, 3, 5))
    model = Page4D(cfg).eval()
    assert model.required_entries() == {1, 2, 3, 5}
    with torch.no_grad():
        entries = model.aggregator(torch.rand(1, 2, 2, 3, 28, 42), {0}, {4}).geometry_entries
    assert sorted(entries) == [0, 4] and entries[0].shape == (1, 2, 2, 5 + 2 * 3, 96)


@pytest.mark.parametrize(("order", "size"), [(("time", "view"), 1), (("time", "view"), 2), (("view", "time"), 2)])
def test_schedule_order_and_block_size(order, size):
    schedule = LayerSchedule.alternating(AggregatorConfig(depth=4, aa_order=order, aa_block_size=size))
    steps = [(s.bank, s.index) for s in schedule.steps]
    expected = [(bank, g * size + j) for g in range(4 // size) for bank in order for j in range(size)]
    assert steps == expected and len(steps) == 8


def test_reference_slot_only_for_first_time_and_view():
    camera = torch.stack([torch.zeros(1, 4), torch.ones(1, 4)])[None]
    registers = torch.stack([torch.zeros(2, 4), torch.ones(2, 4)])[None]
    tokens = special_tokens(camera, registers, b=2, t=3, v=2)
    assert tokens.shape == (2, 3, 2, 3, 4)
    slot = tokens[..., 0, 0]
    assert slot[:, 0, 0].eq(0).all() and slot.sum() == 2 * (3 * 2 - 1)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 3, 28, 28), "got 4-D"),
        ((1, 1, 1, 1, 3, 28, 28), "got 7-D"),
        ((1, 2, 4, 28, 28), "3 channels"),
        ((1, 2, 3, 30, 28), "multiples of 14"),
    ],
)
def test_bad_input_raises_clear_errors(shape, message):
    model = Page4D(preset("tiny-conv"))
    with pytest.raises(ValueError, match=message):
        model(torch.rand(*shape))


def test_integer_images_are_rejected():
    with pytest.raises(ValueError, match="floating-point"):
        Page4D(preset("tiny-conv"))(torch.zeros(1, 2, 3, 28, 28, dtype=torch.uint8))


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="divisible by aa_block_size"):
        ModelConfig(aggregator=AggregatorConfig(depth=24, aa_block_size=5))
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("vggt-2b")
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"aggregatr": {}})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_its_dict_and_json(name):
    cfg = preset(name)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
