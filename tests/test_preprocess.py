"""VGGT pre-processing: uint8-exact parity with the fixture, and the geometry of each image transform."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import FIXTURES, SHARED, needs_shared
from PIL import Image

from page4d.data import ImageTransform, preprocess_images

FIXTURE = FIXTURES / "vggt_preprocess"
# Read at import, so guarded: without ../shared they are empty, and each test that uses them skips (needs_shared).
META = json.loads((FIXTURE / "meta.json").read_text()) if SHARED.is_dir() else {"images": []}
PATHS = [FIXTURE / "inputs" / name for name in META["images"]]


def _run(sources, mode: str, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = preprocess_images(sources, mode=mode, **kwargs)
    return batch, [str(w.message) for w in caught]


@needs_shared
@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_batch_matches_reference_exactly(mode):
    batch, warned = _run(PATHS, mode)
    assert list(batch.images.shape) == META["batch_shapes"][mode]
    assert batch.images.dtype == torch.float32
    assert len(warned) == (1 if mode == "crop" else 0)
    for i, name in enumerate(META["images"]):
        expected = np.array(Image.open(FIXTURE / "expected" / f"{mode}_{i}_{name}"))
        ours = (batch.images[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(ours, expected), f"{mode} image {i} ({name}) differs"
        assert torch.equal(batch.images[i], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)


@needs_shared
@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_single_image_shapes(mode):
    for path in PATHS:
        batch, warned = _run([path], mode)
        assert list(batch.images.shape) == META["single_image_shapes"][mode][path.name]
        assert not warned


@needs_shared
@pytest.mark.filterwarnings("ignore:images have different sizes")
def test_transform_records():
    crop = preprocess_images(PATHS, mode="crop").transforms
    # portrait 90x150 -> 518x868, 175 rows cropped; the 74x37 image -> 252 rows (18.5 rounds to 18), centred.
    assert crop[1] == ImageTransform((150, 90), (868, 518), 175, 0, 0, (518, 518))
    assert crop[3] == ImageTransform((37, 74), (252, 518), 0, 133, 0, (518, 518))
    pad = preprocess_images(PATHS, mode="pad").transforms
    assert pad[1] == ImageTransform((150, 90), (518, 308), 0, 0, 105, (518, 518))


def _project(points: np.ndarray, intrinsic: np.ndarray) -> np.ndarray:
    pix = points @ intrinsic.T
    return pix[:, :2] / pix[:, 2:]


@needs_shared
@pytest.mark.filterwarnings("ignore:images have different sizes")
@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_intrinsics_follow_the_pixels(mode):
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(-1, 1, (50, 2)), rng.uniform(2, 5, (50, 1))], axis=1)
    for transform in preprocess_images(PATHS, mode=mode).transforms:
        height, width = transform.original_size
        intrinsic = np.array([[0.9 * width, 0, 0.47 * width], [0, 1.1 * width, 0.52 * height], [0, 0, 1]])
        adjusted = transform.adjust_intrinsics(intrinsic)
        uv = _project(points, intrinsic)
        np.testing.assert_allclose(_project(points, adjusted), transform.map_pixels(uv), atol=1e-9)
        np.testing.assert_allclose(transform.unmap_pixels(transform.map_pixels(uv)), uv, atol=1e-9)
        np.testing.assert_allclose(transform.restore_intrinsics(adjusted), intrinsic, atol=1e-9)
        as_torch = transform.adjust_intrinsics(torch.from_numpy(intrinsic).float())
        assert as_torch.dtype == torch.float32
        torch.testing.assert_close(as_torch, torch.from_numpy(adjusted).float())


@pytest.mark.parametrize(("mode", "size"), [("crop", (64, 32)), ("pad", (32, 64)), ("crop", (32, 64))])
def test_pixel_mapping_matches_pil_resize(mode, size):
    """A ramp image whose red = 4·column and green = 4·row: after pre-processing, each interior model pixel
    must hold the original coordinate that ``unmap_pixels`` assigns to it (pixel centres, not corners)."""
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width]
    ramp = np.stack([4 * cols, 4 * rows, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    batch = preprocess_images([Image.fromarray(ramp)], mode=mode)
    transform = batch.transforms[0]
    out_h, out_w = transform.output_size
    v, u = np.mgrid[0:out_h, 0:out_w]
    source = transform.unmap_pixels(np.stack([u, v], axis=-1).astype(np.float64))
    inside = (source[..., 0] > 2) & (source[..., 0] < width - 3) & (source[..., 1] > 2) & (source[..., 1] < height - 3)
    assert inside.sum() > 1000
    measured = batch.images[0, :2].permute(1, 2, 0).numpy() * 255 / 4
    np.testing.assert_allclose(measured[inside], source[inside], atol=0.2)


@needs_shared
def test_custom_target_size():
    batch = preprocess_images(PATHS[:1], mode="pad", target_size=252)
    assert batch.images.shape == (1, 3, 252, 252)
    assert batch.transforms[0].resized_size == (154, 252)


@needs_shared
def test_bad_inputs(tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png: cannot read"):
        preprocess_images([not_image])
    with pytest.raises(ValueError, match="missing.png: file not found"):
        preprocess_images([tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="empty"):
        preprocess_images([Image.new("RGB", (0, 5))])
    with pytest.raises(ValueError, match="too extreme"):
        preprocess_images([Image.new("RGB", (1000, 1))])
    with pytest.raises(ValueError, match="multiple of 14"):
        preprocess_images(PATHS, target_size=500)
    with pytest.raises(ValueError, match="'crop' or 'pad'"):
        preprocess_images(PATHS, mode="square")
    with pytest.raises(ValueError, match="no images"):
        preprocess_images([])
