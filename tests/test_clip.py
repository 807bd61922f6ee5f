"""The clip layout ``images/time_XX/viewN.png``: the tabletop4v example, subsets, and every bad-input case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, needs_shared
from PIL import Image

from page4d.data import MultiViewClip, load_clip

TABLETOP = SHARED / "data" / "tabletop4v"
# Read at import, so guarded: without ../shared it is empty, and each test that uses it skips (needs_shared).
CAMERAS = json.loads((TABLETOP / "cameras.json").read_text()) if SHARED.is_dir() else {}


@pytest.fixture(scope="module")
def tabletop() -> MultiViewClip:
    return load_clip(TABLETOP)


@needs_shared
def test_tabletop_layout(tabletop):
    assert tabletop.time_ids == list(range(16)) and tabletop.view_ids == [0, 1, 2, 3]
    assert (tabletop.num_times, tabletop.num_views, tabletop.image_sizes) == (16, 4, [(480, 640)] * 4)
    assert tabletop.frames[5][2] == TABLETOP / "images" / "time_05" / "view2.png"
    assert tabletop.intrinsics.shape == (16, 4, 3, 3) and tabletop.extrinsics.shape == (16, 4, 3, 4)
    assert tabletop.intrinsics.dtype == torch.float32
    assert torch.equal(tabletop.intrinsics[7, 3], torch.tensor(CAMERAS["K"][7][3], dtype=torch.float32))
    assert torch.equal(tabletop.extrinsics[7, 3], torch.tensor(CAMERAS["E_w2c"][7][3], dtype=torch.float32))


@needs_shared
def test_tabletop_depths_and_masks(tabletop):
    depths, masks = tabletop.load_depths(), tabletop.load_masks()
    assert depths.shape == masks.shape == (16, 4, 480, 640)
    assert depths.dtype == torch.float32 and masks.dtype == torch.bool
    raw = np.array(Image.open(TABLETOP / "depths" / "time_03" / "view1.png"))
    assert raw.dtype == np.uint16
    expected = raw.astype(np.float32) / np.float32(1000) * np.float32(6)
    assert np.array_equal(depths[3, 1].numpy(), expected)
    assert np.array_equal(depths[3, 1].numpy() == 0, raw == 0)
    assert np.array_equal(masks[9, 0].numpy(), np.array(Image.open(TABLETOP / "masks" / "time_09" / "view0.png")))


def _copy_subset(dst: Path, times: list[int], views: list[int], folders=("images", "depths", "masks")) -> Path:
    for folder in folders:
        for t in times:
            (dst / folder / f"time_{t:02d}").mkdir(parents=True)
            for v in views:
                shutil.copy(TABLETOP / folder / f"time_{t:02d}" / f"view{v}.png", dst / folder / f"time_{t:02d}")
    shutil.copy(TABLETOP / "cameras.json", dst)
    return dst


@needs_shared
def test_subset_selects_camera_rows(tmp_path, tabletop):
    clip = load_clip(_copy_subset(tmp_path, times=[3, 7], views=[1, 3]))
    assert clip.time_ids == [3, 7] and clip.view_ids == [1, 3]
    assert torch.equal(clip.intrinsics, tabletop.intrinsics[[3, 7]][:, [1, 3]])
    assert torch.equal(clip.extrinsics, tabletop.extrinsics[[3, 7]][:, [1, 3]])
    images, transforms = clip.load_images(mode="crop")
    assert images.shape == (2, 2, 3, 392, 518)
    assert transforms[0].resized_size == (392, 518)
    model_k = clip.model_intrinsics(transforms)
    torch.testing.assert_close(transforms[1].restore_intrinsics(model_k[1, 1]), clip.intrinsics[1, 1])
    assert clip.load_depths().shape == (2, 2, 480, 640)


def _tiny_clip(root: Path, times=(0, 1), views=(0, 1), size=(21, 28)) -> Path:
    for t in times:
        folder = root / "images" / f"time_{t:02d}"
        folder.mkdir(parents=True)
        for v in views:
            Image.new("RGB", (size[1], size[0]), (10 * t, 20 * v, 30)).save(folder / f"view{v}.png")
    return root


def test_tiny_clip_without_extras(tmp_path):
    clip = load_clip(_tiny_clip(tmp_path, times=(4, 9, 12), views=(2, 5)))
    assert clip.time_ids == [4, 9, 12] and clip.view_ids == [2, 5] and clip.image_sizes == [(21, 28)] * 2
    assert clip.depth_paths is None and clip.mask_paths is None and clip.intrinsics is None
    images, _ = clip.load_images(mode="pad", target_size=56)
    assert images.shape == (3, 2, 3, 56, 56)
    with pytest.raises(ValueError, match="no depths/ folder"):
        clip.load_depths()


def test_missing_or_empty_folders(tmp_path):
    with pytest.raises(ValueError, match="clip folder not found"):
        load_clip(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no images/ folder"):
        load_clip(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="no time_XX folders"):
        load_clip(tmp_path)
    (tmp_path / "images" / "time_00").mkdir()
    with pytest.raises(ValueError, match="hold no viewN images"):
        load_clip(tmp_path)


def test_missing_and_extra_views(tmp_path):
    root = _tiny_clip(tmp_path, times=(0, 1, 2), views=(0, 1, 2))
    (root / "images" / "time_01" / "view2.png").unlink()
    shutil.copy(root / "images" / "time_02" / "view0.png", root / "images" / "time_02" / "view7.png")
    with pytest.raises(ValueError, match="time_01: missing view2.*time_02: extra view7.png"):
        load_clip(root)


def test_mixed_resolution(tmp_path):
    root = _tiny_clip(tmp_path)
    Image.new("RGB", (30, 21)).save(root / "images" / "time_01" / "view1.png")
    with pytest.raises(ValueError, match=r"time_01/view1.png is 30x21 but images/time_00/view1.png is 28x21 .* one "
                       "camera"):
        load_clip(root)


@pytest.mark.parametrize("corruption", ["text", "truncated"])
def test_unreadable_image(tmp_path, corruption):
    root = _tiny_clip(tmp_path)
    path = root / "images" / "time_01" / "view0.png"
    data = path.read_bytes()
    path.write_bytes(b"not an image" if corruption == "text" else data[: len(data) // 2])
    with pytest.raises(ValueError, match="time_01/view0.png: cannot read the image"):
        load_clip(root)


@needs_shared
def test_cameras_must_cover_every_view(tmp_path):
    root = _tiny_clip(tmp_path, times=(0, 20), size=(480, 640))
    shutil.copy(TABLETOP / "cameras.json", root)
    with pytest.raises(ValueError, match=r"no camera entry for time ids \[20\]"):
        load_clip(root)


@needs_shared
def test_companion_folder_must_be_complete(tmp_path):
    root = _copy_subset(tmp_path, times=[0, 1], views=[0, 1])
    (root / "masks" / "time_01" / "view1.png").unlink()
    with pytest.raises(ValueError, match="missing masks/time_01/view1.png"):
        load_clip(root)


def _with_cameras(root: Path, edit) -> Path:
    cameras = json.loads(json.dumps(CAMERAS))
    edit(cameras)
    (root / "cameras.json").write_text(json.dumps(cameras))  # json writes NaN / Infinity literals, as users' tools do
    return root


@needs_shared
@pytest.mark.parametrize("size", ["640x480", [640, 480], {"width": "640", "height": 480}, {"w": 640, "h": 480}])
def test_malformed_image_size_is_named(tmp_path, size):
    root = _with_cameras(_copy_subset(tmp_path, [0, 1], [0, 1], ("images",)), lambda c: c.update(image_size=size))
    with pytest.raises(ValueError, match=r'cameras\.json: image_size is .*, expected \{"width": W, "height": H\}'):
        load_clip(root)


@needs_shared
@pytest.mark.parametrize(("key", "value"), [("K", float("nan")), ("E_w2c", float("inf")), ("E_w2c", float("-inf"))])
def test_non_finite_cameras_are_refused_naming_the_entry(tmp_path, key, value):
    def poison(entries: list[tuple[int, int]]):
        def edit(cameras: dict) -> None:
            for t, v in entries:
                cameras[key][t][v][1][1] = value
        return edit

    root = _copy_subset(tmp_path, [0, 1, 3], [0, 1], ("images", "depths"))
    assert load_clip(_with_cameras(root, poison([(5, 3)]))).intrinsics.isfinite().all()  # rows the clip does not use
    with pytest.raises(ValueError, match=r"cameras\.json: the camera of time id 1, view id 0 has NaN or Inf"):
        load_clip(_with_cameras(root, poison([(5, 3), (3, 1), (1, 0)])))
    shutil.rmtree(root / "depths")  # a calibration without depths is refused alike
    with pytest.raises(ValueError, match=r"time id 1, view id 0 has NaN or Inf"):
        load_clip(root)


@needs_shared
def test_cameras_that_are_not_json_are_named(tmp_path):
    root = _copy_subset(tmp_path, [0], [0], ("images",))
    (root / "cameras.json").write_text('{"time_ids": [0],')
    with pytest.raises(ValueError, match=r"cameras\.json: not valid JSON \(.* at line 1, column \d+\); fix cameras"):
        load_clip(root)
