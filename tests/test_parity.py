"""Parity with the reference implementations over every fixture folder.

By default every VGGT, PAGE-4D and Pi3 fixture under ``../shared/fixtures``; ``PAGE4D_FIXTURE_DIRS``
(os.pathsep-separated folders) replaces the list, so any folder of the same schema is a test case
without code changes. Each fixture is built from its ``config.json``, its ``model.safetensors`` is
converted and loaded strictly, its ``inputs.safetensors`` run as T = 1, V = S in eval / float32, and
every tensor of ``outputs.safetensors`` is compared within the fixture's own tolerance. PAGE-4D
negative controls (the same forward with the mask zeroed) must NOT match. Pi3 fixtures compare the
backbone (encoder tokens, every decoder block, the decoder output and the token positions); Pi3's own
heads have no counterpart in page4d.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    FIXTURES,
    PI3_HEAD_OUTPUTS,
    PI3_THRESHOLD,
    SHARED,
    fixture_kind,
    load_fixture,
    needs_shared,
    pi3_intermediates,
    rel_err,
    tolerance,
)
from einops import rearrange

from page4d.aggregator.mask_bias import grid_bias
from page4d.checkpoints import page4d_reference, pi3, vggt
from page4d.checkpoints.loading import load_strict
from page4d.geometry import extri_intri_to_pose_encoding, unproject_depth
from page4d.model import Page4D

SUPPORTED = {"vggt": vggt, "page4d": page4d_reference, "pi3": pi3}
EXP_OUTPUTS = {"depth", "depth_conf", "world_points_conf"}


def fixture_dirs() -> list[Path]:
    env = os.environ.get("PAGE4D_FIXTURE_DIRS")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    folders = sorted(d for d in FIXTURES.iterdir() if (d / "config.json").is_file())
    return [d for d in folders if fixture_kind(json.loads((d / "config.json").read_text())) in SUPPORTED]


def fixture_cases() -> list:
    """:func:`fixture_dirs` as test cases. Without ``../shared`` (and no ``PAGE4D_FIXTURE_DIRS``) there is no
    folder to list: one case that skips naming the missing prerequisite, instead of a failed collection."""
    if not os.environ.get("PAGE4D_FIXTURE_DIRS") and not SHARED.is_dir():
        return [pytest.param(FIXTURES, marks=needs_shared, id=FIXTURES.name)]
    return fixture_dirs()


@needs_shared
def test_default_fixture_list_has_the_reference_fixtures():
    names = {d.name for d in fixture_dirs()}
    if "PAGE4D_FIXTURE_DIRS" not in os.environ:
        assert {"vggt_conv_tiny", "vggt_dinov2_tiny", "page4d_tiny", "page4d_release_tiny", "pi3_tiny"} <= names


def squeeze_time(x: torch.Tensor) -> torch.Tensor:
    """Our ``[B, 1, V, ...]`` -> the reference's ``[B, S, ...]``."""
    assert x.shape[1] == 1
    return x[:, 0]


def load_reference_model(folder: Path, kind: str) -> tuple[dict, Page4D]:
    fx = load_fixture(str(folder.resolve()))
    converter = SUPPORTED[kind]
    model = Page4D(converter.model_config_from_reference(fx["config"])).eval()
    state, report = converter.convert(fx["model"], source=str(folder / "model.safetensors"))
    load_strict(model, state, report)
    return fx, model


def run_fixture(folder: Path, kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Our counterpart of every output a reference fixture may hold."""
    fx, model = load_reference_model(folder, kind)
    images = fx["inputs"]["images"]
    query = fx["inputs"].get("query_points")
    height, width = images.shape[-2:]
    ours: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        pred = model(images, query_points=query)
        grid = images.unsqueeze(1)
        ours["patch_embed_tokens"] = model.aggregator.encode(grid).flatten(0, 2)
        aggregated = model.aggregator(grid, range(model.config.aggregator.depth))
    for i, entry in aggregated.pose_entries.items():
        ours[f"aggregator_layer_{i}"] = squeeze_time(entry)
    ours["aggregator_last"] = ours[f"aggregator_layer_{max(aggregated.pose_entries)}"]
    if pred.pose_enc is not None:
        ours["pose_enc"] = squeeze_time(pred.pose_enc)
        for k, p in enumerate(pred.pose_enc_list):
            ours[f"pose_enc_list_{k}"] = squeeze_time(p)
        ours["extrinsic"], ours["intrinsic"] = squeeze_time(pred.extrinsic), squeeze_time(pred.intrinsic)
        ours["pose_enc_roundtrip"] = extri_intri_to_pose_encoding(ours["extrinsic"], ours["intrinsic"], (height, width))
    for name in ("depth", "depth_conf", "world_points", "world_points_conf"):
        if getattr(pred, name) is not None:
            ours[name] = squeeze_time(getattr(pred, name))
    if "depth" in ours and "extrinsic" in ours:
        ours["depth_unprojected_world_points"] = unproject_depth(ours["depth"], ours["extrinsic"], ours["intrinsic"])
    if pred.track is not None:
        ours["track"] = squeeze_time(pred.track)
        for k, tr in enumerate(pred.track_list):
            ours[f"track_list_{k}"] = squeeze_time(tr)
        ours["vis"] = squeeze_time(pred.track_vis)
        if pred.track_conf is not None:
            ours["conf"] = squeeze_time(pred.track_conf)
    mask = aggregated.mask
    if mask is not None:
        strategy = model.aggregator.mask_bias
        rows, keys = grid_bias(strategy.row_values(0.0)["view"], strategy.key_values(mask), 5)
        ours["mask_key_bias"] = rearrange(keys, "b t v p -> b (t v p)")
        ours["mask_cam_row"] = rearrange(rows, "b t v p -> b (t v p)")
        ours["mask_logits"] = rearrange(mask.logits, "b t v h w -> (b t v) 1 h w")
    return fx, ours


def run_pi3_fixture(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    fx = load_fixture(str(folder.resolve()))
    model = Page4D(pi3.model_config_from_reference(fx["config"])).eval()
    state, report = pi3.convert(fx["model"], source=str(folder / "model.safetensors"))
    load_strict(model, state, report, allow_missing=report.initialised)
    return fx, pi3_intermediates(model, fx["inputs"]["imgs"])


def compare(fx: dict, key: str, ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(error, threshold) under the fixture's rule; PAGE-4D fixtures compare exponential outputs relatively."""
    if fx["tolerance"] is None:  # Pi3 fixtures
        return rel_err(ours, ref), PI3_THRESHOLD
    relative = "relative" in fx["tolerance"].get("rule", "") and key in EXP_OUTPUTS
    if relative:
        bound = tolerance(fx, key)
        assert ours.shape == ref.shape, f"{key}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
        ratio = ((ours.double() - ref.double()).abs() / (bound * ref.double().abs() + 1e-6)).max()
        return float(ratio) * bound, bound
    return rel_err(ours, ref), tolerance(fx, key)


@pytest.mark.parametrize("folder", fixture_cases(), ids=lambda d: d.name)
def test_fixture_parity(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    kind = fixture_kind(config)
    if kind not in SUPPORTED:
        pytest.fail(f"{folder.name}: fixture kind {kind!r} is not supported by this parity test yet")
    fx, ours = run_pi3_fixture(folder) if kind == "pi3" else run_fixture(folder, kind)
    errors, controls = {}, {}
    for key, ref in fx["outputs"].items():
        if kind == "pi3" and key in PI3_HEAD_OUTPUTS:
            continue
        if key.startswith("control_mask_zeroed_"):
            target = key.removeprefix("control_mask_zeroed_")
            controls[key] = compare(fx, target, ours[target], ref)
            continue
        assert key in ours, f"{folder.name}: no counterpart for reference output {key!r}"
        errors[key] = compare(fx, key, ours[key], ref)
    failures = {k: e for k, e in errors.items() if not e[0] <= e[1]}
    assert not failures, f"{folder.name}: outside tolerance (error, tolerance): {failures}"
    matched = {k: e for k, e in controls.items() if e[0] <= e[1]}
    assert not matched, f"{folder.name}: outputs match a mask-zeroed negative control: {matched}"


@needs_shared
def test_fixture_dirs_variable_makes_any_folder_a_case(tmp_path):
    """A copy of a fixture under another name, passed through PAGE4D_FIXTURE_DIRS, is the only test case."""
    copy = tmp_path / "my_rig_fixture"
    shutil.copytree(FIXTURES / "vggt_conv_tiny", copy)
    env = dict(os.environ, PAGE4D_FIXTURE_DIRS=str(copy))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/test_parity.py",
         "-k", "test_fixture_parity"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "PASSED tests/test_parity.py::test_fixture_parity[my_rig_fixture]" in result.stdout
    assert "1 passed" in result.stdout


def vggt_family_cases() -> list:
    return [c for c in fixture_cases() if not isinstance(c, Path) or fixture_kind(
        json.loads((c / "config.json").read_text())) in ("vggt", "page4d")]


PLAN_OUTPUTS = ("pose_enc", "extrinsic", "intrinsic", "depth", "depth_conf", "world_points", "world_points_conf")


def plan_errors(fx: dict, pred, pick) -> dict[str, tuple[float, float]]:
    """(error, tolerance) of every camera and dense output against the fixture; ``pick`` maps our ``[B, T, V, ...]``
    field to the reference's ``[B, S, ...]``."""
    errors = {}
    for key in PLAN_OUTPUTS:
        if key in fx["outputs"] and getattr(pred, key) is not None:
            errors[key] = compare(fx, key, pick(getattr(pred, key)), fx["outputs"][key])
    assert errors, "the fixture has no camera or dense output to compare"
    return errors


@pytest.mark.parametrize("folder", vggt_family_cases(), ids=lambda d: d.name)
def test_set_and_per_step_plans_run_the_reference_semantics(folder: Path):
    """The fixture's S frames as a video ``[1, T = S, V = 1]``: ``set`` equals the reference run on them as one
    sequence, and the factorised plan (time attention across the S steps) does not. As one time step of a
    two-step rig ``[1, T = 2, V = S]`` whose other step holds other images, ``per-step`` equals the reference on
    that step alone."""
    kind = fixture_kind(json.loads((folder / "config.json").read_text()))
    fx, model = load_reference_model(folder, kind)
    images = fx["inputs"]["images"]  # [1, S, 3, H, W]
    video = images[:, :, None]
    errors = plan_errors(fx, model.infer(video, attention="set"), lambda x: x[:, :, 0])
    failures = {k: e for k, e in errors.items() if not e[0] <= e[1]}
    assert not failures, f"{folder.name} set plan: outside tolerance (error, tolerance): {failures}"
    factorised = plan_errors(fx, model.infer(video, attention="factorised"), lambda x: x[:, :, 0])
    assert any(e[0] > e[1] for e in factorised.values()), f"{folder.name}: the factorised plan matches too"
    other = torch.rand(images.shape, generator=torch.Generator().manual_seed(1))
    for step in (0, 1):
        rig = torch.stack([images, other] if step == 0 else [other, images], dim=1)  # [1, 2, S, 3, H, W]
        errors = plan_errors(fx, model.infer(rig, attention="per-step"), lambda x, s=step: x[:, s])
        failures = {k: e for k, e in errors.items() if not e[0] <= e[1]}
        assert not failures, f"{folder.name} per-step plan, step {step}: outside tolerance: {failures}"


@needs_shared
def test_converted_reference_checkpoints_record_the_set_layout():
    """A VGGT-family file loaded through the converters records that it was trained on sets of frames, so
    ``attention="auto"`` runs the set plan; a page4d model keeps the factorised layout."""
    from page4d.checkpoints.pretrained import load_checkpoint_file, load_pretrained

    folder = FIXTURES / "vggt_dinov2_tiny"
    fx = load_fixture(str(folder.resolve()))
    config = vggt.model_config_from_reference(fx["config"])
    model, _ = load_checkpoint_file(folder / "model.safetensors", config)
    assert model.config.trained_layout == "set"
    video = fx["inputs"]["images"][:, :, None]
    auto, chosen = model.infer(video), model.infer(video, attention="set")
    assert torch.equal(auto.depth, chosen.depth) and torch.equal(auto.extrinsic, chosen.extrinsic)
    assert load_pretrained("page4d-small")[0].config.trained_layout == "factorised"
    with pytest.raises(ValueError, match="attention 'global': choose one of auto, set, per-step, factorised"):
        model.infer(video, attention="global")
