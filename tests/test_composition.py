"""Initialisation recipes: validation before any tensor is read, key sources, streaming copy, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import FIXTURES, load_fixture, needs_shared
from safetensors.torch import load_file, save_file

from page4d.checkpoints import page4d_reference
from page4d.checkpoints.composition import (
    PI3_PAGE4D,
    RECIPES,
    Recipe,
    Stage,
    compose,
    load_recipe,
    plan,
    with_sparse_from_view,
)
from page4d.config import DynamicMaskConfig, ModelConfig, SparseGlobalConfig
from page4d.inputs import ForwardInputs
from page4d.model import Page4D
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
    assert f"copied {len(pose)} keys from other loaded keys" in report.summary()
    kept = dataclasses.replace(recipe, initialise={**recipe.initialise, "aggregator.pose_*": "trained from scratch"})
    fresh, fresh_report = compose(kept, {"page4d": PAGE4D})
    assert not fresh_report.copies and all(fresh_report.initialised[k] == "trained from scratch" for k in pose)
    assert not torch.equal(fresh.state_dict()[pose[0]], state[pose[0]])


def mv_target(cfg: ModelConfig, split: int, sparse_after: int, **mask_changes) -> dict:
    """``cfg`` with page4d-mv's mechanisms: the mask head after block ``split - 1``, the sparse block after pair
    ``sparse_after`` (what page4d-mv is at full size: 8 and 11)."""
    depth = cfg.aggregator.depth
    blocks = tuple(range(split, depth))
    cfg.aggregator.dynamic_mask = DynamicMaskConfig(head="fusion", bias="pose_geo", after_block=split - 1,
                                                    biased_view_blocks=blocks, biased_time_blocks=blocks)
    cfg.aggregator.dynamic_mask = dataclasses.replace(cfg.aggregator.dynamic_mask, **mask_changes)
    cfg.aggregator.temporal_rope = True
    cfg.aggregator.sparse_global = SparseGlobalConfig(after_pairs=(sparse_after,), num_landmarks=4)
    cfg.validate()
    return cfg.to_dict()


def without_track_head(recipe: Recipe) -> Recipe:
    """``recipe`` for page4d_tiny, which has no track head."""
    stages = tuple(dataclasses.replace(s, keys=tuple(k for k in s.keys if k != "track_head.*")) for s in recipe.stages)
    return dataclasses.replace(recipe, stages=stages)


def source_of(report) -> dict[str, str]:
    return {k: v.split(":", 1)[0] for k, v in report.mapped.items()}


@needs_shared
def test_page4d_pi3_recipe_takes_everything_from_page4d_and_says_pi3_added_nothing(pi3_page4d_tiny):
    """Seed 002's plan: PAGE-4D first for every block, token and head; Pi3 only where PAGE-4D gives nothing,
    which at one size is nowhere: its block keys are listed as taken from the other source."""
    _, files = pi3_page4d_tiny
    recipe = without_track_head(dataclasses.replace(RECIPES["page4d-pi3"], target=tiny_mv_target()))
    model, report = compose(recipe, {"page4d": files["page4d"], "pi3": files["pi3"]})
    state, ref = model.state_dict(), load_file(str(PAGE4D))
    source = source_of(report)
    for k in state:
        if k.startswith(("aggregator.time_blocks.", "aggregator.view_blocks.", "aggregator.patch_embed.",
                         "camera_head.", "depth_head.", "point_head.", "aggregator.register_token",
                         "aggregator.camera_token")):
            assert source[k] == "page4d", k
        else:
            assert k in report.initialised, k
    assert torch.equal(state["aggregator.time_blocks.3.attn.qkv.weight"],
                       ref["aggregator.frame_blocks.3.attn.qkv.weight"])
    assert "from another source" in report.unused["pi3:decoder.6.attn.qkv.weight"]
    assert "from another source" in report.unused["pi3:register_token"]


@needs_shared
@pytest.mark.parametrize("sparse_from_view", [False, True])
def test_vggt_mv_recipe_imports_every_vggt_key_and_starts_the_new_modules_as_the_identity(sparse_from_view):
    """page4d-mv from VGGT: every VGGT key loaded from the file, every new key initialised with a reason; with the
    sparse block copied from the view block before it, its attention is that block's and its LayerScale 0, so the
    model's outputs are those of the model with the block at its initialisation."""
    from page4d.checkpoints import vggt

    path = FIXTURES / "vggt_dinov2_tiny" / "model.safetensors"
    target = mv_target(vggt.model_config_from_reference(load_fixture("vggt_dinov2_tiny")["config"]), 2, 1)
    base = RECIPES["vggt-mv-sparse-from-view" if sparse_from_view else "vggt-mv"]
    recipe = dataclasses.replace(base, target=target,
                                 copies={"aggregator.sparse_blocks.0.block.": "aggregator.view_blocks.1."}
                                 if sparse_from_view else {})
    model, report = compose(recipe, {"vggt": path})
    state, ref = model.state_dict(), load_file(str(path))
    assert set(report.mapped) | set(report.initialised) == set(state)
    for k in state:
        new = k.startswith(("aggregator.dynamic_mask_head.", "aggregator.mask_bias.", "aggregator.temporal_rope.",
                            "aggregator.sparse_blocks."))
        assert (k in report.initialised) == (new and not (sparse_from_view and k in report.copies)), k
    assert torch.equal(state["aggregator.view_blocks.2.attn.qkv.weight"],
                       ref["aggregator.global_blocks.2.attn.qkv.weight"])
    assert torch.equal(state["track_head.tracker.updateformer.time_blocks.0.attn.in_proj_weight"],
                       ref["track_head.tracker.updateformer.time_blocks.0.attn.in_proj_weight"])
    sparse = "aggregator.sparse_blocks.0.block."
    if sparse_from_view:
        assert torch.equal(state[sparse + "attn.qkv.weight"], ref["aggregator.global_blocks.1.attn.qkv.weight"])
        assert report.copies[sparse + "mlp.fc1.weight"] == "aggregator.view_blocks.1.mlp.fc1.weight"
        assert not state[sparse + "ls1.gamma"].any() and not state[sparse + "ls2.gamma"].any()
        assert report.initialised[sparse + "ls1.gamma"].startswith("LayerScale 0")
    else:
        assert not torch.equal(state[sparse + "attn.qkv.weight"], ref["aggregator.global_blocks.1.attn.qkv.weight"])
    with torch.no_grad():
        images = torch.rand(1, 2, 2, 3, 42, 56, generator=torch.Generator().manual_seed(0))
        pred = model(images)
        model.aggregator.sparse_blocks[0].block.attn.qkv.weight.normal_()  # LayerScale 0: the block is identity
        assert torch.equal(model(images).depth, pred.depth)


@needs_shared
def test_page4d_mv_recipes_drop_or_keep_page4d_s_mask_head():
    """From PAGE-4D: ``page4d-mv`` leaves its mask head unused (the target's head is another architecture);
    ``page4d-mv-page4d-mask`` keeps it, fused for the pose/geometry biases, with the fusion gate initialised."""
    target = tiny_mv_target()
    plain_recipe = without_track_head(dataclasses.replace(RECIPES["page4d-mv"], target=target))
    plain, plain_report = compose(plain_recipe, {"page4d": PAGE4D})
    assert "target model has no such key" in plain_report.unused["page4d:aggregator.spatial_mask_head.head0.0.weight"]
    fused_target = dict(target)
    fused_target["aggregator"] = {**target["aggregator"],
                                  "dynamic_mask": {**target["aggregator"]["dynamic_mask"], "head": "fin10",
                                                   "fuse": True}}
    recipe = without_track_head(dataclasses.replace(RECIPES["page4d-mv-page4d-mask"], target=fused_target))
    model, report = compose(recipe, {"page4d": PAGE4D})
    state, ref = model.state_dict(), load_file(str(PAGE4D))
    for k in ref:
        if k.startswith("aggregator.spatial_mask_head."):
            assert torch.equal(state[k], ref[k]) and source_of(report)[k] == "page4d", k
    assert {k for k in report.initialised if k.startswith("aggregator.mask_fusion.")} == {
        "aggregator.mask_fusion.alpha", "aggregator.mask_fusion.beta", "aggregator.mask_fusion.bias"}
    assert not report.unused.get("page4d:aggregator.spatial_mask_head.head0.0.weight")
    external = torch.zeros(1, 2, 2, 42, 56)
    with torch.no_grad():
        images = torch.rand(1, 2, 2, 3, 42, 56, generator=torch.Generator().manual_seed(0))
        moving = model(images, ForwardInputs(external_mask=external)).dynamic_mask
    assert torch.isfinite(moving).all() and moving.shape == (1, 2, 2, 42, 56)


def test_recipe_copies_must_match_and_have_a_loaded_origin(pi3_page4d_tiny):
    _, files = pi3_page4d_tiny
    base = without_track_head(dataclasses.replace(RECIPES["page4d-mv"], target=tiny_mv_target()))
    nothing = dataclasses.replace(base, copies={"aggregator.nowhere.": "aggregator.view_blocks.1."})
    with pytest.raises(ValueError, match="copies 'aggregator.nowhere.' matches no target key left to fill"):
        compose(nothing, {"page4d": files["page4d"]})
    unloaded = dataclasses.replace(base, initialise={**base.initialise, "aggregator.sparse_blocks.*": "x"},
                                   copies={})
    compose(unloaded, {"page4d": files["page4d"]})  # the plain recipe still composes
    orphan = dataclasses.replace(with_sparse_from_view(base), copies={
        "aggregator.sparse_blocks.0.block.": "aggregator.dynamic_mask_head."})
    with pytest.raises(ValueError, match="would copy aggregator.dynamic_mask_head"):
        compose(orphan, {"page4d": files["page4d"]})


class ListedSource:
    """A checkpoint known only by its key listing (``../shared/fixtures/*_keys_fullsize.json``): meta tensors."""

    def __init__(self, shapes: dict[str, list[int]], name: str):
        self.path, self.shapes = name, shapes

    def meta_state(self) -> dict[str, torch.Tensor]:
        with torch.device("meta"):
            return {k: torch.empty(shape) for k, shape in self.shapes.items()}


def full_size_listing(family: str) -> ListedSource:
    if family == "page4d-reference":
        shapes = json.loads((FIXTURES / "page4d_keys_fullsize.json").read_text())["page4d_fin10"]
    else:
        keys = json.loads((FIXTURES / f"{family}_keys_fullsize.json").read_text())["keys"]
        shapes = {k: v["shape"] if isinstance(v, dict) else v for k, v in keys.items()}
    return ListedSource(shapes, f"{family}_keys_fullsize.json")


@needs_shared
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_named_recipe_plans_at_full_size_and_accounts_for_every_key(name):
    """Each named recipe against the released checkpoints' real key lists and page4d-mv's (meta tensors): every
    target key has a source, a copy or a reason, every source key is used or listed unused with a reason."""
    recipe = RECIPES[name]
    sources = {label: full_size_listing(family) for label, family in recipe.sources.items()}
    with torch.device("meta"):
        target = Page4D(recipe.target_config())
    owner, report = plan(recipe, sources, target)
    keys = set(target.state_dict())
    assert set(report.mapped) | set(report.initialised) == keys and not set(report.mapped) & set(report.initialised)
    for label, source in sources.items():
        used = {v.split(":", 1)[1] for v in report.mapped.values() if v.startswith(f"{label}:")}
        assert all(k in used or f"{label}:{k}" in report.unused for k in source.shapes), label
    assert all(why for why in report.initialised.values())
