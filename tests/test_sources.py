"""Inputs of ``page4d reconstruct``: videos, per-camera image lists, time selection and external masks."""

from __future__ import annotations

import re
import shutil
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import EXAMPLE, SHARED, needs_shared
from PIL import Image

from page4d.data.layout import load_clip
from page4d.data.preprocess import resample_to_model
from page4d.data.sources import TimeSelection, open_input
from page4d.data.video import frame_step

TABLETOP = SHARED / "data" / "tabletop4v"


def frames_for(view: int, count: int, size: tuple[int, int] = (48, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(view)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def write_video(path, frames: list[np.ndarray], fps: int = 10, codec: str = "ffv1",
                times: list[float] | None = None) -> None:
    """ffv1 in .mkv is lossless, so decoded frames can be compared exactly; libx264 .mp4 announces its length.
    ``times``: presentation time of each frame in seconds (default ``i / fps``)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, frame in enumerate(frames):
            encoded = av.VideoFrame.from_ndarray(frame, format="rgb24")
            encoded.pts = round(1000 * (i / fps if times is None else times[i]))
            encoded.time_base = Fraction(1, 1000)
            container.mux(stream.encode(encoded))
        container.mux(stream.encode())


def test_videos_are_synchronised_by_frame_index_and_decoded_exactly(tmp_path):
    sources = [frames_for(v, 6) for v in range(3)]
    paths = [tmp_path / f"cam{v}.mkv" for v in range(3)]
    for path, frames in zip(paths, sources, strict=True):
        write_video(path, frames)
    clip, notes = open_input(paths)
    assert (clip.num_times, clip.num_views, clip.image_sizes) == (6, 3, [(48, 64)] * 3) and notes == []
    assert clip.time_ids == list(range(6)) and clip.view_ids == [0, 1, 2]
    for t in range(6):
        for v in range(3):
            assert np.array_equal(np.asarray(clip.frames[t][v]), sources[v][t])


def test_a_folder_of_videos_is_one_camera_per_video_in_natural_order(tmp_path):
    """A rig's recordings as they come off the cameras: one file each, a calibration file beside them."""
    rig = tmp_path / "rig"
    rig.mkdir()
    sources = {name: frames_for(v, 5) for v, name in enumerate(("cam1", "cam2", "cam10"))}
    for name, frames in sources.items():
        write_video(rig / f"{name}.mkv", frames)
    (rig / "calibration.toml").write_text("[cam_0]\n")
    clip, notes = open_input(rig)
    assert notes == [f"3 videos in {rig}, one camera each, in this order: cam1.mkv, cam2.mkv, cam10.mkv"]
    assert (clip.num_times, clip.num_views) == (5, 3)
    for t in range(5):
        for v, frames in enumerate(sources.values()):
            assert np.array_equal(np.asarray(clip.frames[t][v]), frames[t])
    listed, _ = open_input([rig / "cam1.mkv", rig / "cam2.mkv", rig / "cam10.mkv"])
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for row_a, row_b in zip(clip.frames, listed.frames, strict=True)
               for a, b in zip(row_a, row_b, strict=True))


def test_video_time_selection(tmp_path):
    sources = [frames_for(v, 12) for v in range(2)]
    paths = [tmp_path / f"cam{v}.mkv" for v in range(2)]
    for path, frames in zip(paths, sources, strict=True):
        write_video(path, frames, fps=10)
    clip, notes = open_input(paths, TimeSelection(fps=5, start=1, frames=3))
    assert clip.time_ids == [2, 4, 6] and "every 2th frame" in notes[0]
    assert np.array_equal(np.asarray(clip.frames[1][1]), sources[1][4])
    clip, _ = open_input(paths, TimeSelection(every=4))
    assert clip.time_ids == [0, 4, 8]
    assert frame_step(30.0, 10.0) == 3 and frame_step(30.0, None) == 1 and frame_step(25.0, 100.0) == 1


def test_videos_of_different_lengths_use_the_shortest_and_say_so(tmp_path):
    write_video(tmp_path / "a.mkv", frames_for(0, 5))
    write_video(tmp_path / "b.mkv", frames_for(1, 4))
    paths = [tmp_path / "a.mkv", tmp_path / "b.mkv"]
    clip, notes = open_input(paths)
    assert clip.num_times == 4 and "a.mkv 0–0.4 s, b.mkv 0–0.3 s" in notes[0] and "the 4 time steps" in notes[0]
    clip, notes = open_input(paths, TimeSelection(sync="index"))
    assert clip.num_times == 4 and "a.mkv: 5, b.mkv: 4" in notes[0]


@needs_shared
def test_videos_at_different_rates_and_start_times_are_synchronised_by_timestamp(tmp_path):
    """The tabletop's 16 steps as a 10 fps clip (step t shown at t / 10 s), recorded by four cameras that differ:
    view 0 at 10 fps, view 1 at 5 fps (even steps only), view 2 started 0.3 s late, view 3 at 20 fps (each step
    shown twice). Timestamp sync follows the slowest camera (view 1) where all four have a frame: steps 4, 6, …, 14;
    every (t, v) must be exactly the tabletop's frame (lossless ffv1)."""
    truth = [[np.asarray(Image.open(TABLETOP / "images" / f"time_{t:02d}" / f"view{v}.png").convert("RGB"))
              for v in range(4)] for t in range(16)]
    recordings = {  # view: (steps shown, presentation times, stated rate)
        0: (list(range(16)), [t / 10 for t in range(16)], 10),
        1: (list(range(0, 16, 2)), [t / 10 for t in range(0, 16, 2)], 5),
        2: (list(range(3, 16)), [t / 10 for t in range(3, 16)], 10),
        3: ([t for t in range(16) for _ in range(2)], [t / 10 + k / 20 for t in range(16) for k in range(2)], 20),
    }
    paths = []
    for v, (steps, times, fps) in recordings.items():
        paths.append(tmp_path / f"cam{v}.mkv")
        write_video(paths[-1], [truth[t][v] for t in steps], fps=fps, times=times)
    clip, notes = open_input(paths)
    assert clip.time_ids == [2, 3, 4, 5, 6, 7]  # frame indices of the slowest camera
    for row, t in zip(clip.frames, range(4, 16, 2), strict=True):
        for v in range(4):
            assert np.array_equal(np.asarray(row[v]), truth[t][v]), (t, v)
    assert "10, 5, 10, 20 fps: time steps follow the slowest camera (cam1.mkv)" in notes[0]
    assert "cam2.mkv 0.3–1.5 s" in notes[1] and "6 time steps from 0.4 to 1.4 s" in notes[1]
    assert "--sync index" in notes[2]
    clip, _ = open_input(paths, TimeSelection(fps=2.5))  # every 2nd step of the 5 fps timeline
    assert clip.time_ids == [2, 4, 6] and np.array_equal(np.asarray(clip.frames[1][3]), truth[8][3])
    by_index, _ = open_input(paths, TimeSelection(sync="index"))  # frame i of each file: wrong pairs on this rig
    assert by_index.num_times == 8 and np.array_equal(np.asarray(by_index.frames[0][2]), truth[3][2])


def test_timestamp_sync_orders_frames_by_presentation_time_and_refuses_disjoint_videos(tmp_path):
    levels = [np.full((32, 32, 3), 20 * i, np.uint8) for i in range(8)]
    write_video(tmp_path / "a.mp4", levels, fps=10, codec="libx264")  # H.264 stores frames out of order (B-frames)
    write_video(tmp_path / "b.mp4", levels[::-1], fps=10, codec="libx264", times=[0.03 + i / 10 for i in range(8)])
    clip, _ = open_input([tmp_path / "a.mp4", tmp_path / "b.mp4"])
    assert clip.num_times == 8
    assert [round(float(np.asarray(row[0]).mean()) / 20) for row in clip.frames] == list(range(8))
    assert [round(float(np.asarray(row[1]).mean()) / 20) for row in clip.frames] == list(range(8))[::-1]
    write_video(tmp_path / "late.mkv", levels[:3], fps=10, times=[5.0, 5.1, 5.2])
    with pytest.raises(ValueError, match=r"the videos share no time \(a\.mp4 0–0\.7 s, late\.mkv 5–5\.2 s, "
                                         r"by presentation timestamp\); .*pass --sync index"):
        open_input([tmp_path / "a.mp4", tmp_path / "late.mkv"])
    assert open_input([tmp_path / "a.mp4", tmp_path / "late.mkv"], TimeSelection(sync="index"))[0].num_times == 3
    with pytest.raises(ValueError, match="--sync 'pts': choose one of timestamp, index"):
        TimeSelection(sync="pts")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_videos_fail_with_the_file_name(tmp_path, damage):
    write_video(tmp_path / "good.mp4", frames_for(0, 8), codec="libx264")
    data = (tmp_path / "good.mp4").read_bytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a video" * 20)
    with pytest.raises(ValueError, match=r"bad\.mp4: cannot decode the video .*re-encode it"):
        open_input([tmp_path / "good.mp4", bad])


def test_videos_of_different_resolutions_are_one_clip_with_a_size_per_view(tmp_path):
    write_video(tmp_path / "a.mkv", frames_for(0, 3))
    write_video(tmp_path / "b.mkv", frames_for(1, 3, size=(32, 64)))
    clip, _ = open_input([tmp_path / "a.mkv", tmp_path / "b.mkv"])
    assert clip.image_sizes == [(48, 64), (32, 64)] and clip.view_names == ["a", "b"]
    images, transforms = clip.load_images(target_size=28)
    # b (wider) is resized to 28 x 14 and padded with white to a's 28 x 28, 7 rows above and below
    assert images.shape == (3, 2, 3, 28, 28) and transforms[1].resized_size == (14, 28)
    assert transforms[1].pad_top == 7 and (images[:, 1, :, :7] == 1).all() and (images[:, 1, :, -7:] == 1).all()
    assert transforms[0].pad_top == 0 and not (images[:, 0, :, :7] == 1).all()


def test_per_camera_folders_and_lists(tmp_path):
    sources = [frames_for(v, 11, size=(28, 42)) for v in range(2)]
    for v in range(2):
        (tmp_path / f"cam{v}").mkdir()
        for i, frame in enumerate(sources[v]):
            Image.fromarray(frame).save(tmp_path / f"cam{v}" / f"frame{i}.png")
    clip, _ = open_input([tmp_path / "cam0", tmp_path / "cam1"])
    assert clip.num_times == 11 and clip.frames[2][1] == tmp_path / "cam1" / "frame2.png"  # natural order
    assert clip.frames[10][0] == tmp_path / "cam0" / "frame10.png"
    listing = tmp_path / "cam1.txt"
    listing.write_text("# camera 1, reversed\n" + "\n".join(f"cam1/frame{i}.png" for i in reversed(range(11))))
    clip, _ = open_input([tmp_path / "cam0", listing], TimeSelection(start=9))
    assert clip.time_ids == [9, 10] and clip.frames[0][1] == tmp_path / "cam1" / "frame1.png"
    (tmp_path / "cam1" / "frame3.png").unlink()
    with pytest.raises(ValueError, match=r"different numbers of images .*cam0: 11, .*cam1: 10"):
        open_input([tmp_path / "cam0", tmp_path / "cam1"])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: [d / "missing"], r"missing: not found"),
        (lambda d: [d / "empty"], r"empty: no \.png/\.jpg images"),
        (lambda d: [d / "notes.md"], r"cannot tell what .*notes\.md is"),
        (lambda d: [d / "list.txt"], r"listed images not found: .*nope\.png"),
    ],
)
def test_bad_inputs_say_what_to_do(tmp_path, make, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.md").write_text("hello")
    (tmp_path / "list.txt").write_text("nope.png\n")
    with pytest.raises(ValueError, match=message):
        open_input(make(tmp_path))


@needs_shared
def test_clip_time_selection_keeps_cameras_and_companions_aligned():
    full = load_clip(TABLETOP)
    clip, _ = open_input([TABLETOP], TimeSelection(every=3, start=1, frames=3))
    assert clip.time_ids == [3, 6, 9]
    assert clip.frames[1][2] == TABLETOP / "images" / "time_06" / "view2.png"
    assert clip.depth_paths[2][0] == TABLETOP / "depths" / "time_09" / "view0.png"
    assert np.array_equal(clip.extrinsics.numpy(), full.extrinsics[[3, 6, 9]].numpy())
    with pytest.raises(ValueError, match="--fps applies to video inputs"):
        open_input([TABLETOP], TimeSelection(fps=5))
    with pytest.raises(ValueError, match="--start 20 is past the end: the input has 16 time steps"):
        open_input([TABLETOP], TimeSelection(start=20))


def test_external_masks_land_on_the_model_grid(tmp_path):
    clip, _ = open_input([EXAMPLE], masks=EXAMPLE / "masks")
    _, transforms = clip.load_images(target_size=224)
    masks = clip.load_external_masks(transforms, range(1, 3))
    expected = resample_to_model(clip.load_masks().numpy()[1:3].astype(np.float32), transforms[0])
    assert masks.shape == (2, 4, 168, 224) and np.array_equal(masks.numpy(), expected) and 0 < expected.mean() < 0.5
    partial = tmp_path / "masks"
    shutil.copytree(EXAMPLE / "masks", partial)
    (partial / "time_09" / "view3.png").unlink()
    with pytest.raises(ValueError, match=r"--masks .*missing time_09/view3\.png; give a mask for every"):
        open_input([EXAMPLE], masks=partial)


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink"])
def test_the_same_camera_twice_is_refused(tmp_path, spelling):
    (tmp_path / "cam0").mkdir()
    (tmp_path / "other").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "cam0" / "frame0.png")
    (tmp_path / "cam0.txt").write_text("cam0/frame0.png\n")
    write_video(tmp_path / "cam0.mkv", frames_for(0, 2))
    for name in ("cam0", "cam0.txt", "cam0.mkv"):
        first = tmp_path / name
        second = {"same": first, "dotdot": tmp_path / "other" / ".." / name, "symlink": tmp_path / f"link_{name}"}
        second = second[spelling]
        if spelling == "symlink":
            second.symlink_to(first)
        message = f"^{re.escape(str(first))} and {re.escape(str(second))} are the same camera; each camera must be"
        with pytest.raises(ValueError, match=message):
            open_input([first, second])
