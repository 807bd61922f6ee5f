"""Windowed inference: window plans, Sim(3) overlap alignment and stitching, against exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLE, SHARED, example_truth, needs_shared

from page4d.data.layout import load_clip
from page4d.geometry.rotations import quat_to_mat
from page4d.geometry.unprojection import unproject_depth
from page4d.inputs import ForwardInputs
from page4d.outputs import Predictions
from page4d.presets import preset
from page4d.reconstruction.record import Reconstruction
from page4d.reconstruction.runner import WindowPlan, reconstruct
from page4d.reconstruction.spool import Spool, StepArray, write_npz
from page4d.reconstruction.windows import apply_sim3_to_outputs, fit_overlap, pixel_points, plan_windows


def dense_points(depth: np.ndarray, extrinsic: np.ndarray, intrinsic: np.ndarray) -> np.ndarray:
    """``[N, H, W, 3]`` world points of ``depth [N, H, W]`` (the dense reference)."""
    return unproject_depth(*(torch.from_numpy(a) for a in (depth, extrinsic, intrinsic))).numpy()


def random_sim3(seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    quat = torch.nn.functional.normalize(torch.randn(4, generator=gen, dtype=torch.float64), dim=0)
    return 0.5 + float(torch.rand(1, generator=gen)), quat_to_mat(quat).numpy(), torch.randn(3, generator=gen).numpy()


@pytest.mark.parametrize(
    ("num_times", "window", "overlap", "expected"),
    [
        (16, 6, 2, [(0, 6), (4, 10), (8, 14), (10, 16)]),
        (10, 4, 1, [(0, 4), (3, 7), (6, 10)]),
        (5, 8, 2, [(0, 5)]),
        (200, 32, 4, None),
    ],
)
def test_window_plans_cover_the_clip_with_the_overlap(num_times, window, overlap, expected):
    plan = plan_windows(num_times, window, overlap)
    if expected is not None:
        assert [(w.start, w.stop) for w in plan] == expected
    assert plan[0].start == 0 and plan[-1].stop == num_times and all(len(w) == min(window, num_times) for w in plan)
    assert all(a.stop - b.start >= overlap for a, b in zip(plan, plan[1:], strict=False))


@pytest.mark.parametrize(("num_times", "window", "overlap", "expected"), [
    (8, 3, 0, [(0, 3), (3, 6), (6, 8)]),
    (16, 6, 2, [(0, 6), (4, 10), (8, 14), (12, 16)]),
    (6, 3, 0, [(0, 3), (3, 6)]),
])
def test_unequal_window_plans_cut_the_last_window_short(num_times, window, overlap, expected):
    assert [(w.start, w.stop) for w in plan_windows(num_times, window, overlap, equal=False)] == expected


def test_bad_overlap_is_refused():
    with pytest.raises(ValueError, match="--overlap 4 must be at least 0 and below the window size 4"):
        plan_windows(10, 4, 4)


def test_overlap_fit_recovers_a_known_similarity():
    gt = example_truth(112)
    target = {"depth": gt.depth[:2].reshape(-1, *gt.size), "depth_conf": gt.depth_conf[:2].reshape(-1, *gt.size),
              "extrinsic": gt.extrinsic[:2].reshape(-1, 3, 4), "intrinsic": gt.intrinsic[:2].reshape(-1, 3, 3)}
    # The same frames seen from a window whose world is the ground truth's moved by the inverse of (s, R, t).
    scale, rot, trans = random_sim3(0)
    source = {k: v.copy() for k, v in target.items()}
    moved = {"extrinsic": source["extrinsic"], "depth": source["depth"], "world_points": np.zeros((1, 1, 3))}
    apply_sim3_to_outputs(moved, 1 / scale, rot.T, -rot.T @ trans / scale)
    source.update(extrinsic=moved["extrinsic"], depth=moved["depth"])
    fit = fit_overlap(target, source)
    assert abs(fit[0] - scale) < 1e-5 and np.abs(fit[1] - rot).max() < 1e-5 and np.abs(fit[2] - trans).max() < 1e-4
    index = np.flatnonzero(target["depth"] > 0)[::97]
    dense = dense_points(target["depth"], target["extrinsic"], target["intrinsic"]).reshape(-1, 3)[index]
    np.testing.assert_allclose(pixel_points(target["depth"], target["extrinsic"], target["intrinsic"], index), dense,
                               rtol=1e-5, atol=1e-4)


def test_moving_a_window_moves_cameras_depth_and_points_consistently():
    gt = example_truth(112)
    arrays = {k: getattr(gt, k).copy() for k in ("extrinsic", "depth", "world_points")}
    scale, rot, trans = random_sim3(1)
    apply_sim3_to_outputs(arrays, scale, rot, trans)
    moved = dense_points(arrays["depth"].reshape(-1, *gt.size), arrays["extrinsic"].reshape(-1, 3, 4),
                         gt.intrinsic.reshape(-1, 3, 3))
    expected = scale * gt.depth_points().reshape(moved.shape).astype(np.float64) @ rot.T + trans
    assert np.abs(moved - expected).max() < 1e-3 * np.abs(expected).max()
    assert np.abs(arrays["world_points"] - (scale * gt.world_points.astype(np.float64) @ rot.T + trans)).max() < 1e-3


class WindowedTruth:
    """Stands in for a model: each call returns the ground truth of the next window, expressed in that window's
    own frame (its first camera, at a random scale), as a perfect model that cannot see other windows would."""

    config = preset("tiny")

    def __init__(self, gt, windows: list[range]):
        self.gt, self.windows, self.calls = gt, windows, 0

    def parameters(self):
        """Where it "runs": the CPU."""
        return iter([torch.zeros(())])

    def infer(self, images: torch.Tensor, inputs: ForwardInputs | None = None, attention: str = "auto") -> Predictions:
        times = self.windows[self.calls]
        self.calls += 1
        arrays = {k: getattr(self.gt, k)[times.start : times.stop].copy() for k in ("extrinsic", "depth",
                                                                                     "world_points")}
        first = self.gt.extrinsic[times.start, 0].astype(np.float64)
        scale = 1.0 + 0.3 * self.calls
        apply_sim3_to_outputs(arrays, scale, first[:, :3], scale * first[:, 3])
        window = slice(times.start, times.stop)

        def batch(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x))[None]

        assert images.shape[1] == len(times)
        return Predictions(
            extrinsic=batch(arrays["extrinsic"]), intrinsic=batch(self.gt.intrinsic[window]),
            depth=batch(arrays["depth"])[..., None], depth_conf=batch(self.gt.depth_conf[window] + 1),
            world_points=batch(arrays["world_points"]), world_points_conf=batch(self.gt.world_points_conf[window]),
            dynamic_mask=batch(self.gt.dynamic_mask[window]),
        )


@pytest.mark.parametrize(("window", "overlap"), [(2, 1), (3, 1), (8, 2)])
def test_stitched_windows_equal_one_pass_of_a_perfect_model(window, overlap):
    clip = load_clip(EXAMPLE)
    clip.time_ids, clip.frames = clip.time_ids * 3, clip.frames * 3  # 9 steps: the 3 real ones, three times
    gt = example_truth(112)
    for name in ("extrinsic", "intrinsic", "depth", "depth_conf", "world_points", "world_points_conf", "dynamic_mask"):
        setattr(gt, name, np.concatenate([getattr(gt, name)] * 3))
    windows = plan_windows(9, window, overlap)
    stitched = reconstruct(WindowedTruth(gt, windows), clip, size=112, plan=WindowPlan(window, overlap),
                           progress=False)
    # One pass over the whole clip: the ground truth in the frame of the first window, camera (t0, v0), scale 1.3.
    reference = {k: getattr(gt, k).copy() for k in ("extrinsic", "depth", "world_points")}
    first = gt.extrinsic[0, 0].astype(np.float64)
    apply_sim3_to_outputs(reference, 1.3, first[:, :3], 1.3 * first[:, 3])
    assert stitched.meta["windows"] == [[w.start, w.stop] for w in windows]
    for name, tol in (("extrinsic", 1e-4), ("depth", 1e-4), ("world_points", 1e-4)):
        error = np.abs(getattr(stitched, name) - reference[name]).max() / np.abs(reference[name]).max()
        assert error < tol, (name, error)
    assert np.array_equal(stitched.dynamic_mask, gt.dynamic_mask)
    np.testing.assert_allclose(stitched.intrinsic_original, np.concatenate([load_clip(EXAMPLE).intrinsics.numpy()] * 3),
                               rtol=1e-5)


def test_step_arrays_index_like_numpy_and_stream_into_npz(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(n, 2, 3, 4)).astype(np.float32) for n in (3, 1, 2)]
    spool = Spool(tmp_path / "spool")
    for block in blocks:
        spool.append("x", block)
    full, lazy = np.concatenate(blocks), spool.arrays["x"]
    assert lazy.shape == full.shape and len(lazy) == 6 and lazy.dtype == np.float32
    for index in (0, 5, -1, (2, 1), (3, slice(None), 2), slice(1, 4), slice(None, None, 2), (slice(2, 5), 0, 1)):
        assert np.array_equal(lazy[index], full[index]), index
    assert np.array_equal(np.asarray(lazy), full)
    with pytest.raises(IndexError):
        lazy[6]
    with pytest.raises(ValueError, match="does not extend"):
        spool.append("x", np.zeros((1, 2, 3, 5), np.float32))
    write_npz(tmp_path / "a.npz", {"x": lazy, "ids": np.arange(6)})
    with np.load(tmp_path / "a.npz") as data:
        assert np.array_equal(data["x"], full) and np.array_equal(data["ids"], np.arange(6))


def test_spooled_windows_equal_windows_in_memory(tmp_path):
    clip = load_clip(EXAMPLE)
    gt = example_truth(112)
    windows = plan_windows(3, 2, 1)
    memory = reconstruct(WindowedTruth(gt, windows), clip, size=112, plan=WindowPlan(2, 1), progress=False)
    spooled = reconstruct(WindowedTruth(gt, windows), clip, size=112, plan=WindowPlan(2, 1), progress=False,
                          spool=tmp_path / "spool")
    assert isinstance(spooled.depth, StepArray) and isinstance(spooled.extrinsic, np.ndarray)
    for name in Reconstruction.ARRAYS:
        assert np.array_equal(np.asarray(getattr(spooled, name)), getattr(memory, name)), name
    assert np.array_equal(spooled.depth_points(1), memory.depth_points()[1])
    spooled.save(tmp_path)
    loaded = Reconstruction.load(tmp_path)
    assert all(np.array_equal(getattr(loaded, n), getattr(memory, n)) for n in Reconstruction.ARRAYS)


@needs_shared
def test_the_automatic_window_fits_half_the_free_memory(monkeypatch):
    import page4d.reconstruction.budget as budget
    from page4d.attention_plans import PLANS
    from page4d.presets import preset

    config, clip = preset("tiny"), load_clip(SHARED / "data" / "tabletop4v")
    per_step = budget.bytes_per_frame(config, (392, 518), 4) * clip.num_views

    def window(plan: str = "factorised") -> int:
        return budget.choose_window(config, 4, PLANS[plan], clip.num_times, clip.num_views, (392, 518),
                                    torch.device("cpu")).steps

    monkeypatch.setattr(budget, "available_memory", lambda device: int(per_step * 20.5))
    assert window() == 10  # floor(0.5 * 20.5 steps)
    # spread over 4 processes (--shard grid), each holds a quarter of the tokens and all of the outputs
    pixels = 392 * 518 * 80
    assert budget.bytes_per_frame(config, (392, 518), 4, processes=4) - pixels == (
        budget.bytes_per_frame(config, (392, 518), 4) - pixels) // 4
    spread = budget.choose_window(config, 4, PLANS["factorised"], clip.num_times, clip.num_views, (392, 518),
                                  torch.device("cpu"), processes=4).steps
    assert spread == int(0.5 * per_step * 20.5 // (budget.bytes_per_frame(config, (392, 518), 4, 4) * 4))
    assert spread > 10
    monkeypatch.setattr(budget, "available_memory", lambda device: 0)
    assert window() == 2  # never below 2
    monkeypatch.setattr(budget, "available_memory", lambda device: 10**15)
    assert window() == clip.num_times
    assert budget.available_memory(torch.device("cpu")) > 0


def test_the_automatic_window_counts_each_plans_longest_attention(monkeypatch):
    """With memory to spare, the set plan's window stops where its global attention over T·V frames would pass
    MAX_ATTENTION_TOKENS; factorised attends over T frames of one camera, per-step never grows with T."""
    import page4d.reconstruction.budget as budget
    from page4d.attention_plans import PLANS
    from page4d.presets import preset

    config = preset("tiny")
    frame = 1 + config.aggregator.num_register_tokens + 28 * 37  # tokens of one 392×518 frame
    monkeypatch.setattr(budget, "available_memory", lambda device: 10**15)

    def window(plan: str, views: int = 4) -> budget.WindowChoice:
        return budget.choose_window(config, 4, PLANS[plan], 1000, views, (392, 518), torch.device("cpu"))

    limit = budget.MAX_ATTENTION_TOKENS
    assert window("set").steps == limit // (4 * frame)  # all T·4 frames of the window in one sequence
    assert window("set", views=8).steps == limit // (8 * frame)
    assert window("factorised").steps == limit // frame  # time blocks: T frames of one camera
    assert window("per-step").steps == 1000  # view attention over one step's 4 frames, whatever T
    assert "set plan attends over" in window("set").reason
    assert window("set", views=200).steps == 2  # never below 2, even where one step alone is past the limit
