"""The fusion dynamic mask: head with external-mask fusion (both gates) and the λ pose/geo biases."""

from __future__ import annotations

import pytest
import torch
from conftest import fused_and_dense, perturbed, twin

from page4d.aggregator.mask_bias import PoseGeoBias
from page4d.aggregator.mask_head import FusionMaskHead
from page4d.config import DynamicMaskConfig
from page4d.inputs import ForwardInputs
from page4d.model import Page4D
from page4d.presets import preset


def fusion_model(gate: str = "scalar", lambdas: tuple[float, ...] | None = None, seed: int = 0) -> Page4D:
    """Tiny model, mask head after time block 0, biases in view blocks 1..3 and time blocks 1..3."""
    cfg = preset("tiny")
    cfg.aggregator.dynamic_mask = DynamicMaskConfig(
        head="fusion", gate=gate, bias="pose_geo", after_block=0, biased_view_blocks=(1, 2, 3),
        biased_time_blocks=(1, 2, 3),
    )
    cfg.validate()
    model = perturbed(cfg, seed)
    with torch.no_grad():
        bias = model.aggregator.mask_bias
        for lam, value in zip((bias.lambda_pose, bias.lambda_geo, bias.lambda_pose_t, bias.lambda_geo_t),
                              lambdas or (0.0, 0.0, 0.0, 0.0), strict=True):
            lam.fill_(value)
    return model


def plain_twin(model: Page4D) -> Page4D:
    return twin(model, dynamic_mask=None)


IMAGES = torch.rand(1, 2, 3, 3, 28, 42, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("gate", ["scalar", "mlp"])
def test_zero_lambdas_are_the_plain_model_bit_for_bit(gate):
    model = fusion_model(gate)
    external = (torch.rand(1, 2, 3, 28, 42) > 0.5).float()
    with torch.no_grad():
        ours, plain = model(IMAGES, ForwardInputs(external_mask=external)), plain_twin(model)(IMAGES)
    for name in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert torch.equal(getattr(ours, name), getattr(plain, name)), name
    assert ours.dynamic_mask.shape == (1, 2, 3, 28, 42) and plain.dynamic_mask is None


def test_lambdas_change_outputs_and_fused_equals_dense():
    model = fusion_model(lambdas=(2.0, 1.5, -1.0, 3.0))
    fused, dense = fused_and_dense(model, IMAGES)
    with torch.no_grad():
        plain = plain_twin(model)(IMAGES)
    assert not torch.allclose(fused.pose_enc, plain.pose_enc, atol=1e-4)
    for name in ("pose_enc", "depth", "world_points", "dynamic_mask"):
        assert torch.allclose(getattr(fused, name), getattr(dense, name), atol=1e-5, rtol=1e-5), name


@pytest.mark.parametrize("bank", ["time", "view"])
def test_time_lambdas_act_in_time_blocks_only(bank: str, one_torch_thread: None) -> None:
    """The λ of one bank (time: λ_pose_t, λ_geo_t; view: λ_pose, λ_geo) act in that bank's blocks only. Each
    block is re-run without any bias on the very input it got in the biased forward (float64): the biased
    blocks (1..3) of that bank change, and every block of the other bank and the unbiased blocks 0 are
    bit-exact (a bank whose λ are all 0 takes no bias path at inference)."""
    lambdas = (0.0, 0.0, 2.0, 1.5) if bank == "time" else (2.0, 1.5, 0.0, 0.0)
    aggregator = fusion_model(lambdas=lambdas).aggregator.double()
    blocks = {(kind, i): getattr(aggregator, f"{kind}_blocks")[i] for kind in ("time", "view") for i in range(4)}
    seen: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def keep(key: tuple[str, int]):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            seen[key] = (args[0], args[1], output)
        return hook

    handles = [block.register_forward_hook(keep(key)) for key, block in blocks.items()]
    try:
        with torch.no_grad():
            aggregator(IMAGES.double(), {3})
    finally:
        for handle in handles:
            handle.remove()
    for (kind, i), block in blocks.items():
        x, pos, out = seen[(kind, i)]
        with torch.no_grad():
            change = float((block(x, pos) - out).abs().max())  # block(x, pos): plain attention, no bias
        if kind == bank and i > 0:  # blocks 0 are not in biased_*_blocks
            assert change > 1e-4, (kind, i, change)
        else:
            assert change == 0.0, (kind, i, change)


def test_row_values_signs_and_clamp():
    bias = PoseGeoBias(DynamicMaskConfig(bias="pose_geo", lambda_bound=4.0))
    with torch.no_grad():
        bias.lambda_pose.fill_(1.0)
        bias.lambda_geo.fill_(9.0)
        bias.lambda_pose_t.fill_(-7.0)
        bias.lambda_geo_t.fill_(0.5)
        rows = bias.row_values(0.0)
    assert [float(x) for x in rows["view"]] == [-1.0, 4.0]
    assert [float(x) for x in rows["time"]] == [4.0, 0.5]


def new_parameter_grads(model: Page4D, with_mask_loss: bool) -> dict[str, bool]:
    external = (torch.rand(1, 2, 3, 28, 42, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    pred = model(IMAGES, ForwardInputs(external_mask=external))
    torch.manual_seed(0)
    terms = [*pred.pose_enc_list, pred.depth, pred.world_points] + ([pred.dynamic_mask] if with_mask_loss else [])
    sum((x * torch.randn_like(x)).sum() for x in terms).backward()
    new = {n: p for n, p in model.named_parameters() if n.split(".")[1] in ("dynamic_mask_head", "mask_bias")}
    assert len(new) == 13  # the head: 3 convs (weight, bias), α, β, b; the four λ
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in new.items()}


def test_zero_lambdas_still_train():
    """At λ = 0 the bias path runs in training, so every λ gets a gradient (the head learns from a mask
    loss until the λ move); the outputs equal the plain model's within rounding."""
    model = fusion_model().train()
    with torch.no_grad():
        assert torch.allclose(model(IMAGES).pose_enc, plain_twin(model).train()(IMAGES).pose_enc, atol=1e-5)
    assert all(new_parameter_grads(model, with_mask_loss=True).values())


def test_nonzero_lambdas_train_the_head_through_the_bias():
    grads = new_parameter_grads(fusion_model(lambdas=(1.0, 1.0, 1.0, 1.0)).train(), with_mask_loss=False)
    assert all(grads.values()), [n for n, ok in grads.items() if not ok]


@pytest.mark.parametrize("gate", ["scalar", "mlp"])
def test_head_fuses_the_external_mask_with_the_right_polarity(gate):
    torch.manual_seed(0)
    head = FusionMaskHead(16, gate)
    image = torch.randn(4, 16, 3, 5)
    alone = head(image)
    external = torch.zeros(4, 3, 5)
    external[:, :, :2] = 1.0
    fused = head(image, external)
    for out in (alone, fused):
        assert all(x.shape == (4, 3, 5) for x in out)
        assert ((out[1] > 0) & (out[1] < 1)).all()
    # A patch the external mask calls moving ends up more likely moving, a static one less.
    assert (fused[1][..., :2] > alone[1][..., :2]).all() and (fused[1][..., 2:] < alone[1][..., 2:]).all()


def test_external_mask_errors():
    model = fusion_model()
    with pytest.raises(ValueError, match=r"external_mask must be \[B, T, V, H, W\] = \[1, 2, 3, 28, 42\]"):
        model(IMAGES, ForwardInputs(external_mask=torch.zeros(1, 2, 3, 28, 40)))
    with pytest.raises(ValueError, match="needs a model whose dynamic_mask head is 'fusion'"):
        Page4D(preset("tiny-page4d-release"))(IMAGES, ForwardInputs(external_mask=torch.zeros(1, 2, 3, 28, 42)))


def test_five_d_images_take_a_four_d_external_mask():
    model = fusion_model()
    with torch.no_grad():
        five = model(IMAGES[:, 0], ForwardInputs(external_mask=torch.ones(1, 3, 28, 42)))
        six = model(IMAGES[:, :1], ForwardInputs(external_mask=torch.ones(1, 1, 3, 28, 42)))
    assert torch.equal(five.dynamic_mask, six.dynamic_mask)


@pytest.mark.parametrize("bound", [0.0, -1.0])
def test_lambda_bound_must_be_positive(bound):
    cfg = preset("tiny")
    cfg.aggregator.dynamic_mask = DynamicMaskConfig(
        head="fusion", bias="pose_geo", after_block=0, biased_view_blocks=(1,), lambda_bound=bound
    )
    with pytest.raises(ValueError, match="lambda_bound must be > 0"):
        cfg.validate()


def test_pose_rows_lower_and_geo_rows_raise_the_attention_mass_on_moving_keys():
    """Through the real strategy: camera/register queries (pose) attend less to moving keys, patch queries
    (geometry) more; register/camera keys get no bias."""
    from page4d.aggregator.mask_bias import grid_bias
    from page4d.aggregator.mask_head import MaskOutput
    from page4d.nn import AttentionExtras, RowKeyBias
    from page4d.nn.attention import dense_attention

    bias = PoseGeoBias(DynamicMaskConfig(bias="pose_geo"))
    with torch.no_grad():
        bias.lambda_pose.fill_(2.0)
        bias.lambda_geo.fill_(1.5)
    moving = torch.zeros(1, 1, 2, 3, 4, dtype=torch.double)
    moving[..., :, :2] = 0.9  # the left half of every frame moves
    mask = MaskOutput(logits=moving, key=moving, moving=moving)
    rows, keys = grid_bias(bias.row_values(0.0)["view"], bias.key_values(mask), num_special=5)
    assert torch.equal(keys[..., :5], torch.zeros(1, 1, 2, 5, dtype=torch.double))
    rows, keys = rows.flatten(1), keys.flatten(1)  # one view sequence: [1, V·P]
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, rows.shape[1], 8, generator=gen, dtype=torch.double) for _ in range(2))
    indicator = (keys > 0).double()[:, None, :, None].expand(1, 2, -1, 8)
    plain = dense_attention(q, k, indicator)[0, :, :, 0]
    biased = dense_attention(q, k, indicator, AttentionExtras(bias=RowKeyBias(rows, keys)))[0, :, :, 0]
    special = torch.zeros(rows.shape[1], dtype=torch.bool)
    special[[0, 1, 2, 3, 4, 17, 18, 19, 20, 21]] = True
    assert (biased[:, special] < plain[:, special]).all()
    assert (biased[:, ~special] > plain[:, ~special]).all()
