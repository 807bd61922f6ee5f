"""Opening raster files: 16-bit grey, EXIF orientation, colour masks, external-mask sizes and huge images."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE
from PIL import Image, ImageOps
from test_sources import frames_for, write_video

from page4d.data import load_clip, load_rgb, preprocess_images
from page4d.data.preprocess import resample_to_model
from page4d.data.rasters import oriented_size, read_depth, read_mask
from page4d.data.sources import open_input

RED = (255, 0, 0)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _gradient(height: int = 42, width: int = 56) -> np.ndarray:
    """``[H, W]`` uint16 over the full range, including the values either side of each rounding step."""
    return np.linspace(0, 65535, height * width).round().astype(np.uint16).reshape(height, width)


def _marked(height: int, width: int) -> np.ndarray:
    """``[H, W, 3]`` black with a red 8 x 8 block in the stored top-left corner."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:8, :8] = RED
    return pixels


def _record(action):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = action()
    return result, caught


def test_sixteen_bit_grey_png_is_scaled_to_eight_bits(tmp_path):
    values = _gradient()
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    expected = np.rint(values / 257).astype(np.uint8)
    rgb = load_rgb(tmp_path / "grey16.png")
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb), np.repeat(expected[..., None], 3, axis=-1))
    assert expected.min() == 0 and expected.max() == 255 and (expected < 255).mean() > 0.99
    # 56 x 42 at target 56 is not resized, so the model input is the 8-bit image itself
    batch = preprocess_images([tmp_path / "grey16.png"], mode="crop", target_size=56)
    assert np.array_equal((batch.images[0] * 255).round().byte().numpy(), np.stack([expected] * 3))


@pytest.mark.parametrize(("mode", "dtype"), [("I;16B", ">u2"), ("I;16L", "<u2"), ("I", "<i4")])
def test_every_sixteen_bit_mode_is_scaled(mode, dtype):
    values = _gradient()
    img = Image.frombytes(mode, (values.shape[1], values.shape[0]), values.astype(dtype).tobytes())
    assert np.array_equal(np.asarray(load_rgb(img))[..., 1], np.rint(values / 257))


def test_thirty_two_bit_values_beyond_sixteen_bits_are_refused():
    img = Image.frombytes("I", (2, 1), np.array([0, 70000], "<i4").tobytes())
    with pytest.raises(ValueError, match=r"values outside 0\.\.65535; export it as an 8- or 16-bit image"):
        load_rgb(img)


def test_depth_stays_raw_and_follows_the_exif_orientation(tmp_path):
    values = _gradient()
    Image.fromarray(values).save(tmp_path / "depth.png", exif=_exif(8))
    depth = read_depth(tmp_path / "depth.png")
    assert depth.dtype == np.uint16 and np.array_equal(depth, np.rot90(values))  # 8 is undone anticlockwise
    assert oriented_size(tmp_path / "depth.png") == (56, 42)
    Image.new("RGB", (4, 3)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png: depth must be a single-channel image, got mode RGB"):
        read_depth(tmp_path / "rgb.png")


# the stored top-left marker ends top-right (6: turned clockwise) or bottom-left (8: anticlockwise)
@pytest.mark.parametrize(("orientation", "corner"), [(6, np.s_[:8, -8:]), (8, np.s_[-8:, :8])])
def test_exif_rotated_jpeg_is_loaded_upright(tmp_path, orientation, corner):
    path = tmp_path / "rotated.jpg"
    Image.fromarray(_marked(30, 40)).save(path, exif=_exif(orientation), quality=95)
    assert oriented_size(path) == (40, 30)  # stored 40 wide x 30 high
    pixels = np.asarray(load_rgb(path)).astype(int)
    assert pixels.shape == (40, 30, 3)
    assert pixels[corner][..., 0].mean() > 200 and pixels[corner][..., 1].mean() < 40
    assert pixels[:8, :8, 0].mean() < 40
    assert np.array_equal(pixels, np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")))


def _rotated_clip(root: Path) -> Path:
    """2 x 2 clip stored 28 wide x 21 high with EXIF orientation 6: upright it is 21 x 28, marker top-right."""
    stored_mask = np.zeros((21, 28), bool)
    stored_mask[:5, :5] = True
    for t in range(2):
        for folder in ("images", "masks", "depths"):
            (root / folder / f"time_{t:02d}").mkdir(parents=True)
        for v in range(2):
            Image.fromarray(_marked(21, 28)).save(root / "images" / f"time_{t:02d}" / f"view{v}.jpg",
                                                  exif=_exif(6), quality=95)
            Image.fromarray(stored_mask).save(root / "masks" / f"time_{t:02d}" / f"view{v}.png", exif=_exif(6))
            Image.fromarray(_gradient(21, 28)).save(root / "depths" / f"time_{t:02d}" / f"view{v}.png", exif=_exif(6))
    return root


def test_clip_of_exif_rotated_images_works_end_to_end(tmp_path):
    clip = load_clip(_rotated_clip(tmp_path))
    assert clip.image_sizes == [(28, 21)] * clip.num_views
    (images, transforms), caught = _record(lambda: clip.load_images(mode="pad", target_size=56))
    assert images.shape == (2, 2, 3, 56, 56) and not caught
    assert transforms[1].original_size == (28, 21) and transforms[1].resized_size == (56, 42)
    red, green = images[1, 1, 0].numpy(), images[1, 1, 1].numpy()
    # white padding is 7 columns each side: the red marker sits top-right of the picture, not top-left
    assert red[:12, 36:48].mean() > 0.8 and green[:12, 36:48].mean() < 0.2 and red[:12, 8:20].mean() < 0.2
    masks = clip.load_masks()
    assert masks.shape == (2, 2, 28, 21) and masks[0, 0, :5, -5:].all() and masks.sum() == 4 * 25
    assert clip.load_depths().shape == (2, 2, 28, 21)


def _upright_clip(root: Path) -> Path:
    """2 x 2 clip of 42 x 28 PNGs (1176 pixels), which crop mode at target 42 leaves unresized."""
    for t in range(2):
        (root / "images" / f"time_{t:02d}").mkdir(parents=True)
        for v in range(2):
            Image.new("RGB", (42, 28), (10 * t, 20 * v, 30)).save(root / "images" / f"time_{t:02d}" / f"view{v}.png")
    return root


def test_clip_mixing_an_exif_rotated_image_checks_the_upright_size(tmp_path):
    root = _upright_clip(tmp_path)
    path = root / "images" / "time_01" / "view1.png"
    stored = np.zeros((42, 28, 3), np.uint8)
    stored[..., 2] = np.arange(28, dtype=np.uint8)[None] * 9
    Image.fromarray(stored).save(path, exif=_exif(6))  # 28 x 42 stored, 42 x 28 upright like the others
    clip = load_clip(root)
    (images, _), caught = _record(lambda: clip.load_images(mode="crop", target_size=42))
    assert clip.image_sizes == [(28, 42)] * 2 and images.shape == (2, 2, 3, 28, 42) and not caught
    assert np.array_equal((images[1, 1] * 255).round().byte().permute(1, 2, 0).numpy(), np.rot90(stored, -1))
    Image.new("RGB", (42, 28)).save(path, exif=_exif(8))  # stored like the others, so 28 x 42 upright
    with pytest.raises(ValueError, match=r"time_01/view1\.png is 28x42 but images/time_00/view1\.png is 42x28"):
        load_clip(root)


def test_per_camera_folders_compare_upright_sizes(tmp_path):
    for v in range(2):
        (tmp_path / f"cam{v}").mkdir()
        for i in range(2):
            Image.new("RGB", (28, 21)).save(tmp_path / f"cam{v}" / f"frame{i}.png")
    Image.new("RGB", (21, 28)).save(tmp_path / "cam1" / "frame0.png", exif=_exif(6))
    clip, _ = open_input([tmp_path / "cam0", tmp_path / "cam1"])
    assert clip.image_sizes == [(21, 28)] * clip.num_views
    Image.new("RGB", (28, 21)).save(tmp_path / "cam1" / "frame1.png", exif=_exif(5))
    with pytest.raises(ValueError, match=r"cam1/frame1\.png is 21x28 but .*cam1/frame0\.png is 28x21"):
        open_input([tmp_path / "cam0", tmp_path / "cam1"])


def _colour_masks(source: Path, target: Path, mode: str) -> None:
    """Re-save every ``time_XX/viewN.png`` boolean mask of ``source`` under ``target`` in PIL ``mode``."""
    for path in source.glob("time_*/view*.png"):
        moving = np.asarray(Image.open(path)) != 0
        if mode == "RGB":  # one colour channel only, the others 0
            pixels = np.zeros((*moving.shape, 3), np.uint8)
            pixels[moving, 1] = 200
        elif mode == "RGBA":  # opaque black where static, transparent colour where moving: alpha is ignored
            pixels = np.full((*moving.shape, 4), 255, np.uint8)
            pixels[..., :3] = 0
            pixels[moving] = (0, 0, 3, 0)
        else:  # LA (opaque), or P whose palette entry 0 is white: the index counts, not the colour
            pixels = np.stack([moving.astype(np.uint8) * 5, np.full(moving.shape, 255, np.uint8)], axis=-1)
        img = Image.fromarray(pixels)
        if mode == "P":
            img = Image.frombytes("P", img.size, pixels[..., 0].tobytes())
            img.putpalette([255, 255, 255] + [0, 0, 0] * 255)
        (target / path.parent.name).mkdir(parents=True, exist_ok=True)
        img.save(target / path.parent.name / path.name)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_colour_masks_read_as_non_zero_colour(tmp_path, mode):
    original = load_clip(EXAMPLE)
    root = tmp_path / "clip"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("masks"))
    _colour_masks(EXAMPLE / "masks", root / "masks", mode)
    assert Image.open(root / "masks" / "time_09" / "view2.png").mode == mode
    clip = load_clip(root)
    expected = original.load_masks()
    assert 0 < expected.float().mean() < 0.5 and np.array_equal(clip.load_masks().numpy(), expected.numpy())
    external, _ = open_input([EXAMPLE], masks=root / "masks")
    _, transforms = external.load_images(target_size=224)
    grid = resample_to_model(expected.numpy().astype(np.float32), transforms[0])
    assert np.array_equal(external.load_external_masks(transforms).numpy(), grid)
    assert read_mask(root / "masks" / "time_09" / "view2.png").shape == (480, 640)


def test_external_mask_size_is_checked_when_the_input_is_opened(tmp_path):
    masks = tmp_path / "masks"
    shutil.copytree(EXAMPLE / "masks", masks)
    Image.new("1", (480, 640)).save(masks / "time_10" / "view1.png", exif=_exif(6))  # upright 640 x 480: fine
    clip, _ = open_input([EXAMPLE], masks=masks)
    assert clip.external_mask_paths[2][1] == masks / "time_10" / "view1.png"
    Image.new("L", (320, 240)).save(masks / "time_09" / "view3.png")
    with pytest.raises(ValueError, match=r"--masks .*time_09/view3\.png is 320x240 but its view's images are 640x480 "
                                         r"\(W x H\); give masks at the image resolution"):
        open_input([EXAMPLE], masks=masks)


def test_large_clip_warns_once_instead_of_pil(tmp_path, monkeypatch):
    root = _upright_clip(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    clip, caught = _record(lambda: load_clip(root))
    assert [w.category for w in caught] == [UserWarning]
    message = str(caught[0].message)
    assert "time_00/view0.png is 42x28 (0.0 Mpx)" in message and "downscaled to the model input" in message
    _, caught = _record(lambda: clip.load_images(target_size=42))
    assert caught == []
    (_, _), caught = _record(lambda: open_input([root / "images" / "time_00", root / "images" / "time_01"]))
    assert len(caught) == 1 and "time_00/view0.png is 42x28" in str(caught[0].message)
    assert not any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def test_image_above_pil_limit_is_refused(tmp_path, monkeypatch):
    root = _upright_clip(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ValueError, match=r"time_00/view0\.png is 1,176 pixels, above the limit of 1,000 pixels .*"
                                         r"downscale it first"):
        load_clip(root)
    with pytest.raises(ValueError, match=r"view1\.png is 1,176 pixels, above the limit of 1,000 pixels"):
        load_rgb(root / "images" / "time_01" / "view1.png")


def test_video_above_pil_limit_is_refused(tmp_path, monkeypatch):
    for v in range(2):
        write_video(tmp_path / f"cam{v}.mkv", frames_for(v, 2))  # 64 x 48 = 3072 pixels
    paths = [tmp_path / "cam0.mkv", tmp_path / "cam1.mkv"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    (_, _), caught = _record(lambda: open_input(paths))
    assert len(caught) == 1 and "cam0.mkv is 64x48" in str(caught[0].message)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"cam0\.mkv is 64x48 \(0\.0 Mpx\), above the limit of 2,000 pixels"):
        open_input(paths)
