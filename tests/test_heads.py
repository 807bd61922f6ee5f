"""Camera, DPT and track heads against the VGGT parity fixtures (float32, eval)."""

from __future__ import annotations

import pytest
import torch
from conftest import load_fixture, needs_shared, rel_err, tolerance
from torch import nn

from page4d.config import CameraHeadConfig, DPTHeadConfig, TrackHeadConfig
from page4d.heads import CameraHead, DPTHead, TrackHead

pytestmark = needs_shared  # every test reads a fixture of ../shared
FIXTURES = ["vggt_conv_tiny", "vggt_dinov2_tiny"]


def camera_config(entry: dict) -> CameraHeadConfig:
    """Fixture ``camera_head`` entry -> ``CameraHeadConfig`` (``dim_in`` and the encoding type aside)."""
    keys = ("trunk_depth", "num_heads", "mlp_ratio", "init_values", "trans_act", "quat_act", "fl_act", "num_iterations")
    return CameraHeadConfig(**{k: entry[k] for k in keys})


def dpt_config(entry: dict) -> DPTHeadConfig:
    """Fixture ``depth_head`` / ``point_head`` entry -> ``DPTHeadConfig``."""
    keys = ("output_dim", "activation", "conf_activation", "features", "pos_embed", "feature_only", "down_ratio",
            "frames_chunk_size")
    return DPTHeadConfig(
        **{k: entry[k] for k in keys},
        out_channels=tuple(entry["out_channels"]),
        intermediate_layer_idx=tuple(entry["intermediate_layer_idx"]),
    )


def track_config(entry: dict) -> TrackHeadConfig:
    """Fixture ``track_head`` entry (with its ``feature_extractor`` / ``tracker`` parts) -> ``TrackHeadConfig``."""
    extractor, tracker = entry["feature_extractor"], entry["tracker"]
    assert tracker["latent_dim"] == entry["features"] and tracker["use_spaceatt"]
    keys = ("features", "iters", "predict_conf", "stride", "corr_levels", "corr_radius", "hidden_size")
    return TrackHeadConfig(
        **{k: entry[k] for k in keys},
        out_channels=tuple(extractor["out_channels"]),
        intermediate_layer_idx=tuple(extractor["intermediate_layer_idx"]),
        tracker_depth=tracker["depth"],
        tracker_num_heads=tracker["num_heads"],
        num_virtual_tracks=tracker["num_virtual_tracks"],
        max_scale=tracker["max_scale"],
        mlp_ratio=tracker["mlp_ratio"],
    )


def load_head(head: nn.Module, fixture: dict, prefix: str) -> nn.Module:
    state = {k[len(prefix) + 1 :]: v for k, v in fixture["model"].items() if k.startswith(prefix + ".")}
    head.load_state_dict(state, strict=True)
    return head.eval()


def patch_taps(fixture: dict, layer_idx: tuple[int, ...]) -> list[torch.Tensor]:
    start = fixture["config"]["patch_start_idx"]
    return [fixture["outputs"][f"aggregator_layer_{i}"][:, :, start:] for i in layer_idx]


def image_size(fixture: dict) -> tuple[int, int]:
    return fixture["config"]["inputs"]["H"], fixture["config"]["inputs"]["W"]


def build_dpt(fixture: dict, name: str) -> DPTHead:
    entry = fixture["config"][name]
    return load_head(DPTHead(dpt_config(entry), entry["dim_in"], entry["patch_size"]), fixture, name)


def build_track(fixture: dict) -> TrackHead:
    entry = fixture["config"]["track_head"]
    return load_head(TrackHead(track_config(entry), entry["dim_in"], entry["patch_size"]), fixture, "track_head")


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request: pytest.FixtureRequest) -> dict:
    return load_fixture(request.param)


def assert_close(fixture: dict, key: str, ours: torch.Tensor) -> None:
    err, tol = rel_err(ours, fixture["outputs"][key]), tolerance(fixture, key)
    assert err <= tol, f"{fixture['config']['name']}/{key}: rel err {err:.3g} > {tol:.3g}"


@torch.no_grad()
def test_camera_head_matches_reference(fixture: dict) -> None:
    entry = fixture["config"]["camera_head"]
    head = load_head(CameraHead(camera_config(entry), entry["dim_in"]), fixture, "camera_head")
    poses = head(fixture["outputs"]["aggregator_last"][:, :, 0])
    assert len(poses) == entry["num_iterations"]
    for k, pose in enumerate(poses):
        assert_close(fixture, f"pose_enc_list_{k}", pose)
    assert_close(fixture, "pose_enc", poses[-1])


@torch.no_grad()
@pytest.mark.parametrize(("name", "pred_key", "conf_key"), [
    ("depth_head", "depth", "depth_conf"),
    ("point_head", "world_points", "world_points_conf"),
])
def test_dpt_head_matches_reference(fixture: dict, name: str, pred_key: str, conf_key: str) -> None:
    head = build_dpt(fixture, name)
    pred, conf = head(patch_taps(fixture, head.cfg.intermediate_layer_idx), image_size(fixture))
    assert_close(fixture, pred_key, pred)
    assert_close(fixture, conf_key, conf)


@torch.no_grad()
def test_track_head_matches_reference() -> None:
    fixture = load_fixture("vggt_dinov2_tiny")
    head = build_track(fixture)
    out = head(patch_taps(fixture, head.cfg.intermediate_layer_idx), image_size(fixture),
               fixture["inputs"]["query_points"])
    assert len(out.tracks) == head.cfg.iters
    for k, track in enumerate(out.tracks):
        assert_close(fixture, f"track_list_{k}", track)
    assert_close(fixture, "track", out.tracks[-1])
    assert_close(fixture, "vis", out.vis)
    assert_close(fixture, "conf", out.conf)


@torch.no_grad()
def test_dpt_frame_chunking_is_exact() -> None:
    """Chunk sizes 1 and 8 agree to float64 rounding.

    In float32 they differ by ~1e-6 relative only because oneDNN convolutions round differently
    for different batch sizes; float64 shows that chunking itself changes nothing.
    """
    fixture = load_fixture("vggt_dinov2_tiny")
    taps = [torch.cat([t, t.flip(1), t], dim=1).double() for t in patch_taps(fixture, (0, 1, 2, 3))]  # 9 frames
    heads = [build_dpt(fixture, "depth_head"), build_dpt(fixture, "point_head"), build_track(fixture).feature_extractor]
    for head in heads:
        head.double()
        outputs = []
        for chunk in (1, 8):
            head.cfg.frames_chunk_size = chunk
            out = head(taps, image_size(fixture))
            outputs.append(out if isinstance(out, tuple) else (out,))
        for a, b in zip(*outputs, strict=True):
            assert rel_err(a, b) < 1e-12


def assert_all_parameters_get_gradients(head: nn.Module, outputs: list[torch.Tensor]) -> None:
    gen = torch.Generator().manual_seed(0)
    loss = sum((out * torch.randn(out.shape, generator=gen)).sum() for out in outputs)
    loss.backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_every_parameter_gets_a_gradient() -> None:
    fixture = load_fixture("vggt_dinov2_tiny")
    entry = fixture["config"]["camera_head"]
    camera = load_head(CameraHead(camera_config(entry), entry["dim_in"]), fixture, "camera_head")
    assert_all_parameters_get_gradients(camera, camera(fixture["outputs"]["aggregator_last"][:, :, 0]))
    size = image_size(fixture)
    for name in ("depth_head", "point_head"):
        head = build_dpt(fixture, name)
        pred, conf = head(patch_taps(fixture, head.cfg.intermediate_layer_idx), size)
        assert_all_parameters_get_gradients(head, [pred, conf])
    track = build_track(fixture)
    out = track(patch_taps(fixture, track.cfg.intermediate_layer_idx), size, fixture["inputs"]["query_points"])
    assert_all_parameters_get_gradients(track, [*out.tracks, out.vis, out.conf])
