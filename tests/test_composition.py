"""Initialisation recipes: validation before any tensor is read, key sources, streaming copy, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import FIXTURES, load_fixture, needs_shared
from safetensors.torch import load_file, save_file

from page4d.checkpoints import page4d_reference
from page4d.checkpoints.composition import PI3_PAGE4D, Recipe, Stage, compose, load_recipe
from page4d.config import DynamicMaskConfig, ModelConfig, SparseGlobalConfig
from page4d.patterns import expand

PAGE4D = FIXTURES / "page4d_tiny" / "model.safetensors"


def tiny_mv_target() -> dict:
    """page4d_tiny's dims with the design documents' mechanisms (what page4d-mv is at full size)."""
    cfg = page4d_reference.model_config_from_reference(load_fixture("page4d_tiny")["config"])
    cfg.aggregator.dynamic_mask = DynamicMaskConfig(
        head="fusion", bias="pose_geo", after_block=7, biased_view_blocks=tuple(range(8, 24)),
        biased_time_blocks=tuple(range(8, 24)),
    )
    cfg.aggregator.temporal_rope = True
    cfg.aggregator.sparse_global = SparseGlobalConfig(after_pairs=(11,), num_landmarks=4)
    cfg.validate()
    return cfg.to_dict()


def synthetic_pi3(path, width: int = 32, heads: int = 2, pairs: int = 18) -> dict[str, torch.Tensor]:
    """A Pi3-format checkpoint (random values, Pi3 key names and layout) at page4d_tiny's width."""
    gen = torch.Generator().manual_seed(7)
    block = {
        "norm1.weight": [width], "norm1.bias": [width], "attn.qkv.weight": [3 * width, width],
        "attn.qkv.bias": [3 * width], "attn.q_norm.weight": [width // heads], "attn.q_norm.bias": [width // heads],
        "attn.k_norm.weight": [width // heads], "attn.k_norm.bias": [width // heads],
        "attn.proj.weight": [width, width], "attn.proj.bias": [width], "ls1.gamma": [width],
        "norm2.weight": [width], "norm2.bias": [width], "mlp.fc1.weight": [4 * width, width],
        "mlp.fc1.bias": [4 * width], "mlp.fc2.weight": [width, 4 * width], "mlp.fc2.bias": [width],
        "ls2.gamma": [width],
    }
    encoder_block = {k: v for k, v in block.items() if "_norm" not in k}
    shapes = {
        "register_token": [1, 1, 5, width], "encoder.cls_token": [1, 1, width], "encoder.pos_embed": [1, 1370, width],
        "encoder.register_tokens": [1, 4, width], "encoder.patch_embed.proj.weight": [width, 3, 14, 14],
        "encoder.patch_embed.proj.bias": [width], "encoder.norm.weight": [width], "encoder.norm.bias": [width],
        "point_head.proj.weight": [588, width], "point_head.proj.bias": [588],
        "image_mean": [1, 3, 1, 1], "image_std": [1, 3, 1, 1],
        **{f"encoder.blocks.{i}.{k}": s for i in range(2) for k, s in encoder_block.items()},
        **{f"decoder.{i}.{k}": s for i in range(2 * pairs) for k, s in block.items()},
    }
    state = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    save_file(state, str(path))
    return state


@pytest.fixture
def pi3_page4d_tiny(tmp_path) -> tuple[Recipe, dict]:
    # page4d_tiny has no track head; everything else is the pi3-page4d recipe as it stands.
    page4d_keys = tuple(k for k in PI3_PAGE4D.stages[1].keys if k != "track_head.*")
    page4d_stage = dataclasses.replace(PI3_PAGE4D.stages[1], keys=page4d_keys)
    recipe = dataclasses.replace(PI3_PAGE4D, name="pi3-page4d-tiny", target=tiny_mv_target(),
                                 stages=(PI3_PAGE4D.stages[0], page4d_stage))
    pi3_path = tmp_path / "pi3.safetensors"
    return recipe, {"pi3": pi3_path, "page4d": PAGE4D, "pi3_state": synthetic_pi3(pi3_path)}


@needs_shared
def test_pi3_page4d_recipe_takes_every_key_from_the_expected_source(pi3_page4d_tiny):
    recipe, files = pi3_page4d_tiny
    model, report = compose(recipe, {"pi3": files["pi3"], "page4d": files["page4d"]})
    source = {k: v.split(":", 1)[0] for k, v in report.mapped.items()}
    state = model.state_dict()
    for k in state:
        if k.startswith(("aggregator.time_blocks.", "aggregator.view_blocks.")):
            index = int(k.split(".")[2])
            assert source[k] == ("pi3" if index < 18 else "page4d"), k
        elif k.startswith(("aggregator.patch_embed.", "camera_head.", "depth_head.", "point_head.")):
            assert source[k] == "page4d", k
        elif k.startswith(("aggregator.dynamic_mask_head.", "aggregator.mask_bias.", "aggregator.temporal_rope.",
                           "aggregator.sparse_blocks.")):
            assert k in report.initialised, k
    assert source["aggregator.register_token"] == "pi3" and source["aggregator.camera_token"] == "page4d"
    assert set(report.mapped) | set(report.initialised) == set(state)
    # Values really come from the sources.
    pi3, ref = files["pi3_state"], load_file(str(PAGE4D))
    assert torch.equal(state["aggregator.time_blocks.3.attn.qkv.weight"], pi3["decoder.6.attn.qkv.weight"])
    assert torch.equal(state["aggregator.view_blocks.17.mlp.fc2.bias"], pi3["decoder.35.mlp.fc2.bias"])
    assert torch.equal(state["aggregator.view_blocks.20.ls1.gamma"], ref["aggregator.global_blocks.20.ls1.gamma"])
    assert torch.equal(state["aggregator.register_token"], pi3["register_token"][:, :, 1:].repeat(1, 2, 1, 1))
    assert torch.equal(state["aggregator.camera_token"], ref["aggregator.camera_token"])
    assert torch.equal(state["camera_head.embed_pose.weight"], ref["camera_head.embed_pose.weight"])
    # Every source key is accounted for.
    assert all(f"pi3:{k}" in report.unused or any(v == f"pi3:{k}" for v in report.mapped.values()) for k in pi3)
    assert report.unused["pi3:point_head.proj.weight"].startswith("Pi3 point-map output head")
    assert "target model has no such key" in report.unused["page4d:aggregator.spatial_mask_head.head0.0.weight"]
    assert "from another source" in report.unused["page4d:aggregator.frame_blocks.0.norm1.weight"]
    with torch.no_grad():
        pred = model(torch.rand(1, 2, 2, 3, 56, 84))
    assert torch.isfinite(pred.depth).all() and pred.dynamic_mask.shape == (1, 2, 2, 56, 84)


@needs_shared
def test_validation_errors_are_raised_before_any_tensor_is_read(pi3_page4d_tiny, monkeypatch):
    recipe, files = pi3_page4d_tiny
    paths = {"pi3": files["pi3"], "page4d": files["page4d"]}
    from page4d.checkpoints import source as source_module

    monkeypatch.setattr(source_module.LazySource, "load", lambda *a: pytest.fail("a tensor was read"))
    overlap = dataclasses.replace(recipe, stages=(*recipe.stages, Stage("pi3", ("aggregator.time_blocks.{0..1}.*",))))
    with pytest.raises(ValueError, match="already claimed by stage 0"):
        compose(overlap, paths)
    orphan = dataclasses.replace(recipe, stages=(recipe.stages[0], dataclasses.replace(
        recipe.stages[1], keys=tuple(k for k in recipe.stages[1].keys if k != "camera_head.*"))))
    with pytest.raises(ValueError, match=r"target keys have no source: camera_head\."):
        compose(orphan, paths)
    nothing = dataclasses.replace(recipe, stages=(*recipe.stages, Stage("pi3", ("aggregator.nothing.*",))))
    with pytest.raises(ValueError, match="match no target key"):
        compose(nothing, paths)
    absent = dataclasses.replace(recipe, stages=(Stage("pi3", ("camera_head.*",)), *recipe.stages))
    with pytest.raises(ValueError, match="does not provide"):
        compose(absent, paths)


@needs_shared
def test_precedence_first_lets_the_earlier_stage_win(pi3_page4d_tiny):
    recipe, files = pi3_page4d_tiny
    both = dataclasses.replace(
        recipe, precedence="first",
        stages=(recipe.stages[0], dataclasses.replace(recipe.stages[1], keys=(*recipe.stages[1].keys,
                                                                            "aggregator.time_blocks.{0..3}.*"))),
    )
    model, report = compose(both, {"pi3": files["pi3"], "page4d": files["page4d"]})
    assert report.mapped["aggregator.time_blocks.2.ls1.gamma"] == "pi3:decoder.4.ls1.gamma"


@needs_shared
def test_a_source_key_feeding_two_stages_needs_permission(pi3_page4d_tiny):
    recipe, files = pi3_page4d_tiny
    split = dataclasses.replace(recipe, stages=(
        Stage("pi3", ("aggregator.time_blocks.{0..17}.*", "aggregator.view_blocks.{0..17}.*")),
        Stage("pi3", ("aggregator.register_token", "aggregator.camera_token")),
        dataclasses.replace(
            recipe.stages[1], keys=tuple(k for k in recipe.stages[1].keys if k != "aggregator.camera_token")
        ),
    ))
    paths = {"pi3": files["pi3"], "page4d": files["page4d"]}
    compose(split, paths)  # camera and register tokens from one source key in one stage: fine
    split_more = dataclasses.replace(split, stages=(
        split.stages[0], Stage("pi3", ("aggregator.register_token",)), Stage("pi3", ("aggregator.camera_token",)),
        split.stages[2],
    ))
    with pytest.raises(ValueError, match="source keys feed two stages: pi3:register_token"):
        compose(split_more, paths)
    compose(dataclasses.replace(split_more, allow_shared_sources=True), paths)


def test_recipes_load_from_json_and_yaml_files(tmp_path):
    data = {"name": "only-vggt", "target": "tiny-conv", "sources": {"v": "vggt"},
            "stages": [{"source": "v", "keys": ["*"]}]}
    (tmp_path / "r.json").write_text(json.dumps(data))
    (tmp_path / "r.yaml").write_text("name: only-vggt\ntarget: tiny-conv\nsources: {v: vggt}\n"
                                     "stages:\n  - {source: v, keys: ['*']}\n")
    assert load_recipe(tmp_path / "r.json") == load_recipe(tmp_path / "r.yaml") == Recipe.from_dict(data)
    assert load_recipe("pi3-page4d") is PI3_PAGE4D
    with pytest.raises(ValueError, match="not a recipe name"):
        load_recipe("nope")
    with pytest.raises(ValueError, match="unknown recipe fields"):
        Recipe.from_dict(data | {"stagez": []})


def test_expand_ranges():
    assert expand("a.{0..2}.b") == ["a.0.b", "a.1.b", "a.2.b"]
    assert expand("x.{1..2}.{3..4}") == ["x.1.3", "x.1.4", "x.2.3", "x.2.4"]


@pytest.mark.slow
@needs_shared
def test_composed_model_round_trips(pi3_page4d_tiny, tmp_path):
    from page4d.model import Page4D

    recipe, files = pi3_page4d_tiny
    model, _ = compose(recipe, {"pi3": files["pi3"], "page4d": files["page4d"]})
    model.save_pretrained(tmp_path / "out")
    again = Page4D.from_pretrained(tmp_path / "out")
    assert again.config == ModelConfig.from_dict(recipe.target)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lazy_source_reads_exactly_what_safetensors_wrote(tmp_path, dtype):
    from page4d.checkpoints.source import LazySource

    state = {"module.a.weight": torch.randn(3, 4).to(dtype), "module.b": torch.arange(6).reshape(2, 3),
             "module.empty": torch.zeros(0, 2).to(dtype)}
    save_file(state, str(tmp_path / "x.safetensors"))
    src = LazySource(tmp_path / "x.safetensors")
    assert sorted(src.keys()) == ["a.weight", "b", "empty"]
    for key in sorted(src.keys()):
        value = src.load(key)
        assert value.dtype == state[f"module.{key}"].dtype and torch.equal(value, state[f"module.{key}"])
        assert src.meta_state()[key].shape == value.shape
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(ValueError, match="truncated"):
        LazySource(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        LazySource(tmp_path / "junk.safetensors")


def test_pickled_source_releases_only_file_mapped_pages_and_stays_readable(tmp_path):
    from page4d.checkpoints.source import LazySource, _release_pages

    state = {"a": torch.randn(300_000), "b": torch.arange(10)}
    torch.save({"model": state}, tmp_path / "c.pt")
    src = LazySource(tmp_path / "c.pt")
    for key in ("a", "b"):
        src.release(key)
        assert torch.equal(src.load(key), state[key])  # released pages are read back from the file
    heap = torch.randn(300_000)
    copy = heap.clone()
    _release_pages(heap, [])  # not in any file mapping: left alone
    assert torch.equal(heap, copy)


@needs_shared
def test_pi3_tiny_and_page4d_tiny_cannot_share_one_model_and_the_recipe_says_why(pi3_page4d_tiny):
    """The two tiny fixtures do not fit one model (Pi3: 2 decoder pairs of width 64; PAGE-4D: 24 pairs of
    width 32): the recipe is rejected before any tensor is read, naming the keys Pi3 cannot provide (the
    pi3-page4d recipe itself runs above on a Pi3-format file with 18 pairs of width 32)."""
    recipe, _ = pi3_page4d_tiny
    paths = {"pi3": FIXTURES / "pi3_tiny" / "model.safetensors", "page4d": PAGE4D}
    with pytest.raises(ValueError, match=r"stage 0 \(pi3\): the source does not provide 576 claimed keys"):
        compose(recipe, paths)


@needs_shared
def test_branched_pose_blocks_start_as_the_loaded_blocks_they_branch_from():
    """Seed 004, stage 3: importing PAGE-4D into a model with branched dual streams fills every pose-stream block
    from the same source tensors as its shared block (checked against the file itself), and the report says so;
    a recipe that lists them in ``initialise`` keeps them at the model's initialisation instead."""
    target = tiny_mv_target()
    target["aggregator"]["dynamic_mask"].update(streams="dual", dual_weights="branched", dual_from_block=20)
    recipe = Recipe("page4d-branched", target, {"page4d": "page4d-reference"},
                    (Stage("page4d", ("aggregator.patch_embed.*", "aggregator.time_blocks.*",
                                      "aggregator.view_blocks.*", "aggregator.camera_token",
                                      "aggregator.register_token", "camera_head.*", "depth_head.*",
                                      "point_head.*")),),
                    initialise=dict(PI3_PAGE4D.initialise))
    model, report = compose(recipe, {"page4d": PAGE4D})
    source = load_file(str(PAGE4D))
    state = model.state_dict()
    pose = sorted(k for k in state if k.startswith("aggregator.pose_"))
    assert len(pose) == 2 * 4 * 18  # blocks 20..23 of both banks, 18 tensors each
    for key in pose:
        bank, rest = key.removeprefix("aggregator.pose_").split("_blocks.", 1)
        assert report.copies[key] == f"aggregator.{bank}_blocks.{rest}"
        assert report.mapped[key] == report.mapped[report.copies[key]]
        assert torch.equal(state[key], source[report.mapped[key].split(":", 1)[1]])
    assert f"copied {len(pose)} branched pose-stream keys" in report.summary()
    kept = dataclasses.replace(recipe, initialise={**recipe.initialise, "aggregator.pose_*": "trained from scratch"})
    fresh, fresh_report = compose(kept, {"page4d": PAGE4D})
    assert not fresh_report.copies and all(fresh_report.initialised[k] == "trained from scratch" for k in pose)
    assert not torch.equal(fresh.state_dict()[pose[0]], state[pose[0]])
