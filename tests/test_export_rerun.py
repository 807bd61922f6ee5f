"""The rerun export (``--export rerun``), read back with rerun-sdk's own RRD reader (``rerun.chunk.RrdReader``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import rerun as rr
from conftest import EXAMPLE
from rerun.chunk import RrdReader
from test_export import TIME_IDS, VIEW_IDS, H, W, make_recon

import page4d.export.rerun as rerun_export
from page4d.cli.main import main
from page4d.export import export, select_points
from page4d.export.points import PointSelection

STATIC = None
"""The key of an entity's static row in :func:`read_recording`'s result."""


def read_recording(path: Path) -> dict[str, dict[int | None, dict[str, pa.Scalar]]]:
    """``{entity: {time: {component: value}}}`` of the file's only recording, as rerun-sdk reads it: ``time`` is the
    ``time`` time line's value, :data:`STATIC` for static data; the rows of one time are merged."""
    reader = RrdReader(path)
    (store,) = reader.recordings()
    assert store.application_id == "page4d"
    entities: dict[str, dict[int | None, dict[str, pa.Scalar]]] = defaultdict(lambda: defaultdict(dict))
    for chunk in reader.store(store=store).stream().to_chunks():  # a store needs the footer: the file was closed
        if chunk.entity_path == "/__properties":  # rerun's own recording properties
            continue
        assert chunk.timeline_names == ([] if chunk.is_static else ["time"])  # no wall-clock log_time
        batch = chunk.to_record_batch()
        components = [name for name in batch.schema.names if name not in ("rerun.controls.RowId", "time")]
        for row in range(batch.num_rows):
            time = STATIC if chunk.is_static else batch.column("time")[row].as_py()
            entities[chunk.entity_path][time].update({name: batch.column(name)[row] for name in components})
    return entities


def values(scalar: pa.Scalar, dtype=np.float64) -> np.ndarray:
    """A component batch as ``[N, ...]`` numpy (fixed-size lists become rows)."""
    array = scalar.values
    if pa.types.is_fixed_size_list(array.type):
        return array.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(len(array), array.type.list_size)
    return array.to_numpy(zero_copy_only=False).astype(dtype)


def matrix(scalar: pa.Scalar) -> np.ndarray:
    """A ``Mat3x3`` component as a row-major ``[3, 3]`` (rerun stores it column-major)."""
    return values(scalar).reshape(3, 3).T


def image(row: dict[str, pa.Scalar], archetype: str, dtype) -> np.ndarray:
    """The ``[H, W, ...]`` pixels of an ``Image``-like archetype's row."""
    (fmt,) = row[f"{archetype}:format"].as_py()
    (buffer,) = row[f"{archetype}:buffer"].as_py()
    pixels = np.frombuffer(bytes(buffer), dtype).reshape(fmt["height"], fmt["width"], -1)
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def check_points(row: dict[str, pa.Scalar], expected: PointSelection) -> None:
    """Positions, colours (rerun packs them as RGBA uint32) and the confidence component equal ``expected``'s."""
    np.testing.assert_array_equal(values(row["Points3D:positions"], np.float32).reshape(-1, 3), expected.xyz)
    rgba = values(row["Points3D:colors"], np.uint32)
    np.testing.assert_array_equal(np.stack([rgba >> 24, rgba >> 16, rgba >> 8], -1) & 0xFF, expected.rgb)
    np.testing.assert_array_equal(values(row["confidence"], np.float32), expected.conf)


def test_recording_holds_every_steps_cameras_images_and_points(tmp_path):
    recon = make_recon()
    recon.intrinsic[1, :, :2] *= 1.25  # K differs between the steps, as the model's does
    assert export(recon, tmp_path, ["rerun"], progress=False) == [tmp_path / "recording.rrd"]
    entities = read_recording(tmp_path / "recording.rrd")
    cameras = [f"/world/cameras/view{v}{part}" for v in VIEW_IDS for part in ("", "/image", "/image/depth",
                                                                             "/image/dynamic_mask")]
    assert sorted(entities) == sorted(["/world", "/world/cameras", *cameras, "/world/points/moving",
                                       "/world/points/static"])
    for entity in [*cameras, "/world/points/moving"]:
        assert sorted(entities[entity]) == TIME_IDS  # one row per step, on the clip's time ids
    for entity in ("/world", "/world/cameras", "/world/points/static"):
        assert list(entities[entity]) == [STATIC]
    assert values(entities["/world"][STATIC]["ViewCoordinates:xyz"]).tolist() == [[3, 2, 5]]  # R, D, F
    point = np.array([0.3, -1.2, 4.0])
    for t, time_id in enumerate(TIME_IDS):
        for v, view_id in enumerate(VIEW_IDS):
            camera = entities[f"/world/cameras/view{view_id}"][time_id]
            assert camera["Transform3D:relation"].as_py() == [rr.TransformRelation.ParentFromChild.value]
            rot, trans = recon.extrinsic[t, v, :, :3], recon.extrinsic[t, v, :, 3]
            (centre,) = values(camera["Transform3D:translation"])
            np.testing.assert_allclose(centre, -rot.T @ trans, atol=1e-6)
            # camera-to-world: a point taken into the camera by the extrinsic comes back to where it was
            np.testing.assert_allclose(matrix(camera["Transform3D:mat3x3"]) @ (rot @ point + trans) + centre, point,
                                       atol=1e-5)
            pinhole = entities[f"/world/cameras/view{view_id}/image"][time_id]
            np.testing.assert_array_equal(matrix(pinhole["Pinhole:image_from_camera"]), recon.intrinsic[t, v])
            assert values(pinhole["Pinhole:resolution"]).tolist() == [[W, H]]
            np.testing.assert_array_equal(image(pinhole, "Image", np.uint8), recon.images[t, v])
            depth = image(entities[f"/world/cameras/view{view_id}/image/depth"][time_id], "DepthImage", np.float32)
            np.testing.assert_array_equal(depth, np.nan_to_num(recon.depth[t, v], nan=0.0))
            mask = entities[f"/world/cameras/view{view_id}/image/dynamic_mask"][time_id]
            np.testing.assert_array_equal(image(mask, "SegmentationImage", np.uint8), recon.dynamic_mask[t, v] > 0.5)
    steps = [select_points(recon, t) for t in range(2)]
    moving = entities["/world/points/moving"]
    check_points(moving[TIME_IDS[0]], steps[0].subset(steps[0].moving))
    assert len(steps[0].subset(steps[0].moving)) > 0
    assert len(values(moving[TIME_IDS[1]]["Points3D:positions"])) == 0  # nothing moves at the second step
    check_points(entities["/world/points/static"][STATIC],
                 PointSelection.concat([step.subset(~step.moving) for step in steps]))


def test_recording_point_limits_and_percentile(tmp_path, monkeypatch):
    recon = make_recon()
    monkeypatch.setattr(rerun_export, "MAX_MOVING_POINTS", 50)
    monkeypatch.setattr(rerun_export, "MAX_STATIC_POINTS", 301)
    export(recon, tmp_path, ["rerun"], conf_percentile=50, progress=False)
    entities = read_recording(tmp_path / "recording.rrd")
    steps = [select_points(recon, t, conf_percentile=50) for t in range(2)]
    check_points(entities["/world/points/moving"][TIME_IDS[0]], steps[0].subset(steps[0].moving).sample(50))
    check_points(entities["/world/points/static"][STATIC],
                 PointSelection.concat([step.subset(~step.moving).sample(150) for step in steps]))


def test_recording_without_mask_or_with_a_calibrated_world(tmp_path):
    recon = dataclasses.replace(make_recon(), dynamic_mask=None)
    recon.meta["calibration"] = {"poses": True}
    export(recon, tmp_path, ["rerun"], progress=False)
    entities = read_recording(tmp_path / "recording.rrd")
    assert "/world" not in entities  # a calibration's world keeps its own axes
    assert not any(entity.endswith("dynamic_mask") for entity in entities) and "/world/points/moving" not in entities
    check_points(entities["/world/points/static"][STATIC],
                 PointSelection.concat([select_points(recon, t) for t in range(2)]))


def test_recording_refuses_rerun_turned_off(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RERUN", "off")
    with pytest.raises(ValueError, match="RERUN=off"):
        export(make_recon(), tmp_path, ["rerun"], progress=False)
    assert not (tmp_path / "recording.rrd").exists()
    out = tmp_path / "out"  # the command line says so before it runs the model, and writes nothing
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--model", "tiny", "--export", "rerun"]) == 2
    assert "RERUN=off" in capsys.readouterr().err and not out.exists()


def test_reconstruct_writes_the_recording(tmp_path):
    out = tmp_path / "out"
    args = ["reconstruct", str(EXAMPLE), "-o", str(out), "--model", "tiny", "--size", "56", "--export", "rerun"]
    assert main([*args, "--quiet"]) == 0
    entities = read_recording(out / "recording.rrd")
    assert sorted(entities["/world/cameras/view3/image"]) == [8, 9, 10]
    assert {f"/world/cameras/view{v}" for v in range(4)} <= set(entities)


def test_reconstruct_without_rerun_names_the_extra(tmp_path, capsys, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("rerun", "pycolmap") else real_find_spec(name, *args))
    out = tmp_path / "out"
    assert main(["reconstruct", str(EXAMPLE), "-o", str(out), "--export", "png,rerun"]) == 2
    err = capsys.readouterr().err
    assert 'needs rerun, not installed; run pip install "page4d[rerun]"' in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    both = 'needs pycolmap, rerun, not installed; run pip install "page4d[export,rerun]"'
    with pytest.raises(ValueError, match=re.escape(both)):
        export(make_recon(), out, ["colmap", "rerun"])
