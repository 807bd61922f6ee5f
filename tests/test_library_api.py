"""The library's own entry points: old configs migrate, Hub options reach the Hub client, and ``reconstruct``
owns its defaults (trained width, provenance) and the lifetime of its spool."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import EXAMPLE, REPO
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import load_file, save_file

import page4d
from page4d.checkpoints import hub, native
from page4d.checkpoints.pretrained import load_pretrained
from page4d.config import DynamicMaskConfig, ModelConfig, migrate
from page4d.data.layout import load_clip
from page4d.inputs import ForwardInputs
from page4d.model import Page4D
from page4d.presets import preset

SHIPPED = REPO / "page4d" / "weights" / "page4d-small"


def old_config(config: ModelConfig) -> dict:
    """``config`` as an earlier version wrote it: the fusion mask head was called ``seeds``."""
    data = config.to_dict()
    data["aggregator"]["dynamic_mask"]["head"] = "seeds"
    return data


def test_old_mask_head_name_migrates_once_and_is_no_alias():
    data = old_config(preset("tiny-mv"))
    assert ModelConfig.from_dict(data) == preset("tiny-mv")
    assert data["aggregator"]["dynamic_mask"]["head"] == "seeds"  # migrate leaves its input alone
    assert migrate(data)["aggregator"]["dynamic_mask"]["head"] == "fusion"
    assert migrate(preset("tiny").to_dict()) == preset("tiny").to_dict()  # no mask head: nothing to do
    with pytest.raises(ValueError, match="unknown dynamic_mask.head 'seeds'; use one of fin10, release, fusion"):
        ModelConfig(aggregator=preset("tiny-mv").aggregator.__class__(
            embed_dim=32, num_heads=2, depth=4, num_register_tokens=2, dynamic_mask=DynamicMaskConfig(head="seeds")))
    shipped = json.loads((SHIPPED / native.CONFIG_NAME).read_text())
    assert shipped["aggregator"]["dynamic_mask"]["head"] == "fusion"  # migrated in the repository, once


def test_a_folder_saved_by_an_earlier_version_loads_with_the_same_outputs(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(SHIPPED, old)
    (old / native.CONFIG_NAME).write_text(json.dumps(old_config(native.read_config(SHIPPED / native.CONFIG_NAME))))
    images = torch.rand(1, 2, 2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    moving = torch.rand(1, 2, 2, 56, 56, generator=torch.Generator().manual_seed(1)) > 0.5
    masks = ForwardInputs(external_mask=moving.float())
    a, b = Page4D.from_pretrained(old).infer(images, masks), Page4D.from_pretrained(SHIPPED).infer(images, masks)
    assert torch.equal(a.depth, b.depth) and torch.equal(a.dynamic_mask, b.dynamic_mask)


def test_hub_options_reach_every_hub_download(tmp_path, monkeypatch):
    """``from_pretrained("owner/repo", revision=..., ...)`` passes each option to ``hf_hub_download`` (config and
    weights alike), and the files it returns are what loads."""
    calls = []

    def download(**kwargs):
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not in the cache")
        return str(SHIPPED / kwargs["filename"])

    monkeypatch.setattr(hub, "hf_hub_download", download)
    monkeypatch.setattr(hub, "_hub_reachable", lambda: True)
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    options = {"revision": "v1.2", "token": "hf_secret", "cache_dir": str(tmp_path)}
    model = Page4D.from_pretrained("someone/page4d-model", force_download=True, **options)
    assert [c["filename"] for c in calls] == [native.CONFIG_NAME, native.WEIGHTS_NAME]
    assert all({k: c[k] for k in options} == options and c["force_download"] is True for c in calls)
    assert all(c["repo_id"] == "someone/page4d-model" for c in calls)
    assert torch.equal(model.state_dict()["aggregator.camera_token"],
                       Page4D.from_pretrained(SHIPPED).state_dict()["aggregator.camera_token"])
    calls.clear()
    with pytest.raises(hub.OfflineError, match="local_files_only is set"):
        Page4D.from_pretrained("someone/page4d-model", local_files_only=True, revision="v1.2")
    assert all(c["local_files_only"] is True and c["revision"] == "v1.2" for c in calls)  # only the cache looked up


@pytest.mark.slow
def test_library_reconstruct_defaults_to_the_trained_width_and_records_provenance():
    clip = page4d.open_input([EXAMPLE])[0]
    with page4d.reconstruct("page4d-small", clip, progress=False) as recon:
        width = native.read_config(SHIPPED / native.CONFIG_NAME).input_width
        assert recon.meta["preprocess"] == {"mode": "crop", "size": width} and recon.size[1] == width
        meta = recon.meta
        assert meta["model"] == "page4d-small" and meta["untrained"] is False
        assert str(SHIPPED) in meta["weights"] and meta["page4d_version"] == page4d.__version__
        assert meta["config"]["input_width"] == width and meta["device"] == "cpu"
    with page4d.reconstruct("tiny", clip, progress=False) as untrained:
        assert untrained.meta["untrained"] is True and "UNTRAINED" in untrained.meta["weights"]
        assert untrained.size[1] == preset("tiny").input_width


def test_library_reconstruct_owns_its_spool(tmp_path):
    clip = load_clip(EXAMPLE)
    model = Page4D(preset("tiny")).eval()
    with page4d.reconstruct(model, clip, size=56, spool=tmp_path, progress=False) as recon:
        folders = list(tmp_path.iterdir())
        assert len(folders) == 1 and folders[0].name.startswith(".page4d-spool-")
        depth = np.asarray(recon.depth)
        assert depth.shape == (3, 4, 42, 56) and np.isfinite(depth).all()
        assert recon.meta["model"] == "Page4D object" and recon.meta["untrained"] is None
    assert list(tmp_path.iterdir()) == []  # closed: the spool is gone, the caller's folder is left as it was
    with pytest.raises(ValueError, match="the spooled array is gone; the reconstruction it belongs to was closed"):
        recon.depth[0]


def test_the_library_pipeline_is_exported_at_the_top_level():
    names = ("ForwardInputs", "ModelConfig", "Page4D", "Predictions", "Reconstruction", "WindowPlan",
             "load_pretrained", "open_input", "preset", "reconstruct")
    assert all(callable(getattr(page4d, name)) for name in names)
    assert page4d.reconstruct.__module__ == "page4d.reconstruction.runner" and page4d.ForwardInputs is ForwardInputs


def test_library_reconstruct_refuses_bad_arguments_before_the_model_is_built(monkeypatch):
    import page4d.reconstruction.runner as runner

    clip = load_clip(EXAMPLE)
    monkeypatch.setattr(runner, "load_pretrained", lambda *a, **k: pytest.fail("the model was built"))
    for size in (100, 0):
        with pytest.raises(ValueError, match=rf"size {size} must be a positive multiple of 14 \(e.g. 518\)"):
            page4d.reconstruct("tiny", clip, size=size)
    with pytest.raises(TypeError, match=r"clip must be a MultiViewClip \(page4d.open_input\(paths\)\[0\]"):
        page4d.reconstruct("tiny", str(EXAMPLE))
    with pytest.raises(TypeError, match=r"plan must be a page4d.WindowPlan \(e.g. WindowPlan\(window=16"):
        page4d.reconstruct("tiny", clip, plan="all")
    with pytest.raises(TypeError, match=r"model must be a Page4D \(or a stand-in .*\) or a model name .* got dict"):
        page4d.reconstruct({"name": "tiny"}, clip)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"external_mask": np.zeros((1, 2, 2, 28, 28))}, "external_mask must be a torch.Tensor .* got ndarray"),
        ({"keypoints": [[0.5]]}, "keypoints must be a torch.Tensor .* got list"),
        ({"camera_priors": torch.zeros(3)}, r"camera_priors must be a tuple \(intrinsics"),
        ({"mask_step": "10"}, "mask_step must be a number"),
    ],
)
def test_forward_inputs_name_the_field_of_the_wrong_type(fields, match):
    with pytest.raises(TypeError, match=match):
        ForwardInputs(**fields)


def test_a_failed_run_removes_its_spool(tmp_path):
    """No record reaches the caller when a window fails, so the library removes the spool itself."""
    model = Page4D(preset("tiny")).eval()
    calls = []

    def failing(images, inputs=None, attention="auto"):
        calls.append(images.shape[1])
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return Page4D.infer(model, images, inputs)

    model.infer = failing
    with pytest.raises(RuntimeError, match="device lost") as err:  # err keeps the failed frames (and a spool) alive
        page4d.reconstruct(model, load_clip(EXAMPLE), size=56, plan=page4d.WindowPlan(2, 1), spool=tmp_path,
                           progress=False)
    assert calls == [2, 2] and err.traceback and list(tmp_path.iterdir()) == []


def test_one_path_opens_like_a_list_of_one():
    one, _ = page4d.open_input(EXAMPLE)
    listed, _ = page4d.open_input([str(EXAMPLE)])
    assert one.time_ids == listed.time_ids and one.view_ids == listed.view_ids and one.num_times == 3


def test_arguments_that_would_mean_nothing_are_refused(tmp_path):
    model = Page4D(preset("tiny")).eval()
    with pytest.raises(TypeError, match="inputs must be a page4d.ForwardInputs, got dict"):
        model.infer(torch.rand(1, 1, 2, 3, 28, 28), {"external_mask": None})
    with pytest.raises(TypeError, match="tiny is a preset built here with random weights: Hub options"):
        page4d.load_pretrained("tiny", presets=True, hub=hub.HubOptions(revision="v2"))
    with pytest.raises(TypeError, match="tiny is a preset built here with random weights: a config"):
        page4d.load_pretrained("tiny", preset("tiny"), presets=True)


def test_a_given_config_replaces_a_native_folders_own(tmp_path):
    """``load_pretrained(folder, config)`` builds ``config`` (settings that leave the keys alone may differ)."""
    shipped = native.read_config(SHIPPED / native.CONFIG_NAME)
    wider = dataclasses.replace(shipped, input_width=shipped.input_width * 2)
    model, report = page4d.load_pretrained(SHIPPED, wider)
    assert model.config.input_width == 2 * shipped.input_width and report.converter == native.CONVERTER
    assert torch.equal(model.state_dict()["aggregator.camera_token"],
                       page4d.load_pretrained(SHIPPED)[0].state_dict()["aggregator.camera_token"])


def test_a_model_saved_before_the_mask_bias_and_the_own_time_frequencies_keeps_its_outputs(tmp_path):
    """An earlier version's folder: its config dump names no ``normalise`` / ``temporal_frequencies`` (then: the
    z-score and the spatial frequencies) and its weights have no fusion-head bias. It loads, migrated to what it
    was (not to today's defaults), with the same outputs as the same folder with those fields spelled out; a
    hand-written partial config
    gets today's defaults."""
    # The first page4d-small as it was saved: the shipped folder with the legacy behaviour and no bias (b = 0),
    # next to the same model written with every field and b = 0 spelled out.
    data = json.loads((SHIPPED / native.CONFIG_NAME).read_text())
    state = load_file(str(SHIPPED / native.WEIGHTS_NAME))
    state["aggregator.dynamic_mask_head.bias"].zero_()
    spelled, old = tmp_path / "spelled", tmp_path / "old"
    for folder in (spelled, old):
        folder.mkdir()
    data["aggregator"]["dynamic_mask"]["normalise"], data["aggregator"]["temporal_frequencies"] = True, "spatial"
    (spelled / native.CONFIG_NAME).write_text(json.dumps(data))
    save_file(state, str(spelled / native.WEIGHTS_NAME))
    del data["aggregator"]["dynamic_mask"]["normalise"], data["aggregator"]["temporal_frequencies"]
    (old / native.CONFIG_NAME).write_text(json.dumps(data))
    del state["aggregator.dynamic_mask_head.bias"]
    save_file(state, str(old / native.WEIGHTS_NAME))
    migrated = native.read_config(old / native.CONFIG_NAME).aggregator
    assert migrated.dynamic_mask.normalise is True and migrated.temporal_frequencies == "spatial"
    model, report = load_pretrained(old)
    assert "aggregator.dynamic_mask_head.bias" in report.notes
    images = torch.rand(1, 3, 2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    a, b = model.infer(images), Page4D.from_pretrained(spelled).infer(images)
    assert torch.equal(a.depth, b.depth) and torch.equal(a.dynamic_mask, b.dynamic_mask)
    assert torch.equal(a.pose_enc, b.pose_enc)
    file_model, _ = load_pretrained(old / native.WEIGHTS_NAME)  # the file alone, its config beside it
    assert torch.equal(file_model.infer(images).depth, a.depth)
    partial = preset("tiny-mv").to_dict()  # written by hand: only some fields named
    partial["aggregator"]["temporal_rope"] = True
    for section, names in ((partial["aggregator"]["dynamic_mask"], ("normalise", "dual_weights")),
                           (partial["aggregator"], ("temporal_frequencies", "epipolar"))):
        for name in names:
            del section[name]
    fresh = ModelConfig.from_dict(partial).aggregator
    assert fresh.dynamic_mask.normalise is False and fresh.temporal_frequencies == "own"
