"""Rig calibration files -> one ``CameraCalibration`` per camera: intrinsics, distortion and (if known) pose.

Formats:

* anipose / Pose2Sim TOML: ``[cam_x]`` tables with ``name``, ``size`` = [width, height], ``matrix`` = K,
  ``distortions`` = [k1, k2, p1, p2], ``rotation`` = Rodrigues vector of the world-to-camera rotation,
  ``translation`` (OpenCV axes and pixel centres, like page4d); other tables (``[metadata]``) are ignored.
* a COLMAP model folder (``cameras`` / ``images`` as ``.txt`` or ``.bin``, read with pycolmap): one camera per
  image, named by the image's file stem; COLMAP puts the centre of pixel (0, 0) at (0.5, 0.5), page4d at (0, 0).
* this project's ``cameras.json`` (the clip layout's, and what ``page4d reconstruct`` writes), or a folder holding
  one: cameras named ``view_names`` or ``viewN``; a pose per time step when the poses change over time, else one.

Every camera is checked (finite numbers, a pinhole K with positive focal lengths, a proper rotation), and an
error names the file and the camera. ``match_cameras`` pairs the cameras with a clip's views (by name, else by
order) and says how.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from page4d.conventions import COLMAP_PIXEL_OFFSET
from page4d.data.layout import CAMERAS_HINT, image_size_entries
from page4d.fileio import natural_key, read_json

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

_COLMAP_PARAMS = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}
"""COLMAP camera models page4d reads (their parameters in COLMAP's order): the pinhole ones and OpenCV's
k1, k2, p1, p2 distortion; fisheye and higher-order models are refused by name."""


@dataclass(frozen=True)
class CameraCalibration:
    """One calibrated camera, in page4d's conventions (OpenCV axes, pixel centres at integer coordinates)."""

    name: str
    size: tuple[int, int] | None
    """(width, height) in pixels of the images the calibration is for (None: the frames', unchecked)."""
    intrinsic: np.ndarray
    """``[3, 3]`` float64 pinhole K."""
    distortion: np.ndarray
    """``[4]`` float64 OpenCV k1, k2, p1, p2 (zeros: none)."""
    extrinsic: np.ndarray | None = None
    """``[3, 4]`` float64 world-to-camera ``[R | t]`` (``[T, 3, 4]``, one per ``time_ids``, for a rig that moves),
    or None when the calibration has intrinsics only."""
    time_ids: tuple[int, ...] | None = None
    """Time ids of a per-step ``extrinsic``; None: one pose for the whole clip."""

    @property
    def has_lens_distortion(self) -> bool:
        return bool(np.any(self.distortion != 0))

    def fitted_to(self, height: int, width: int) -> CameraCalibration:
        """This calibration for frames of ``height`` × ``width``: K rescaled when the calibration is for another
        resolution of the same aspect ratio (pixel centres kept: ``u' = s·(u + 1/2) − 1/2``); ``ValueError`` when
        the aspect ratios differ, since no K maps one onto the other."""
        if self.size is None or self.size == (width, height):
            return replace(self, size=(width, height))
        cal_w, cal_h = self.size
        if abs(round(cal_w * height / cal_h) - width) > 1 and abs(round(cal_h * width / cal_w) - height) > 1:
            raise ValueError(f"camera {self.name!r} is calibrated for {cal_w}x{cal_h} images but its frames are "
                             f"{width}x{height}, another aspect ratio, so the calibration cannot be rescaled; "
                             "calibrate at the frames' resolution, or crop or pad the frames to the calibrated one")
        sx, sy = width / cal_w, height / cal_h
        scale = np.array([[sx, 0.0, (sx - 1) / 2], [0.0, sy, (sy - 1) / 2], [0.0, 0.0, 1.0]])
        return replace(self, size=(width, height), intrinsic=scale @ self.intrinsic)


def read_calibration(path: str | Path) -> list[CameraCalibration]:
    """The cameras of a calibration file or folder (format from the path: ``.toml``, ``.json``, a COLMAP model
    folder or project (``sparse/0``), or a folder holding a ``cameras.json``); ``ValueError`` naming the file and
    what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such calibration file or folder")
    if path.is_file() and path.suffix.lower() == ".toml":
        return read_toml(path)
    if path.is_file() and path.suffix.lower() == ".json":
        return read_cameras_json(path)
    if path.is_dir() and any((path / f"cameras{ext}").is_file() for ext in (".txt", ".bin")):
        return read_colmap(path)
    if path.is_dir() and any((path / "sparse" / "0" / f"cameras{ext}").is_file() for ext in (".txt", ".bin")):
        return read_colmap(path / "sparse" / "0")  # a COLMAP project: images/ and sparse/0/
    if path.is_dir() and (path / "cameras.json").is_file():
        return read_cameras_json(path / "cameras.json")
    raise ValueError(f"{path}: not a calibration page4d reads; give an anipose / Pose2Sim .toml file, a COLMAP "
                     "model folder (cameras.txt / cameras.bin, images.txt / images.bin) or a page4d cameras.json")


def match_cameras(
    cameras: list[CameraCalibration], view_names: list[str], source: str = "the calibration"
) -> tuple[list[CameraCalibration], str]:
    """The calibration of each view, in view order, and a line saying how they were matched: by name when every
    camera's name is a view's name (file or folder stem), else by order when no name is; ``ValueError`` when the
    counts differ or only some names match (the unknown ones named)."""
    if len(cameras) != len(view_names):
        raise ValueError(f"{source} has {len(cameras)} camera(s) ({', '.join(c.name for c in cameras)}) for "
                         f"{len(view_names)} view(s) ({', '.join(view_names)}); give one camera per view")
    by_name = {c.name: c for c in cameras}
    if len(by_name) != len(cameras):
        raise ValueError(f"{source} names a camera twice: {', '.join(c.name for c in cameras)}")
    known = [name for name in view_names if name in by_name]
    if len(known) == len(view_names):
        pairs = [(name, name) for name in view_names]
        return [by_name[name] for name in view_names], "cameras matched by name: " + _pairs(pairs)
    if known:
        unknown = sorted(set(by_name) - set(view_names))
        raise ValueError(f"{source}: camera(s) {', '.join(unknown)} match no view ({', '.join(view_names)}); "
                         "name the cameras like the views, or name none of them to match by order")
    pairs = [(c.name, name) for c, name in zip(cameras, view_names, strict=True)]
    return list(cameras), "cameras matched by order (no camera is named like a view): " + _pairs(pairs)


def _pairs(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(f"{camera} -> {view}" for camera, view in pairs)


def rodrigues(vector: np.ndarray) -> np.ndarray:
    """Rotation matrix ``[3, 3]`` of a Rodrigues (axis · angle) vector ``[3]``."""
    vector = np.asarray(vector, dtype=np.float64)
    angle = float(np.linalg.norm(vector))
    if angle < 1e-12:
        return np.eye(3)
    x, y, z = vector / angle
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def read_toml(path: Path) -> list[CameraCalibration]:
    """The ``[cam_*]`` tables of an anipose / Pose2Sim calibration, in file order."""
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    cameras = []
    for key, table in data.items():
        if key == "metadata" or not isinstance(table, dict):
            continue
        where = f"{path} [{key}]"
        missing = [f for f in ("size", "matrix", "rotation", "translation") if f not in table]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}; an anipose camera table has name, size, "
                             "matrix, distortions, rotation and translation")
        rotation = _array(table["rotation"], (3,), where, "rotation (a Rodrigues vector)")
        translation = _array(table["translation"], (3,), where, "translation")
        extrinsic = np.concatenate([rodrigues(rotation), translation[:, None]], axis=1)
        cameras.append(_checked(CameraCalibration(
            name=str(table.get("name", key)), size=_size(table["size"], where),
            intrinsic=_array(table["matrix"], (3, 3), where, "matrix"),
            distortion=_distortion(table.get("distortions", [0.0, 0.0, 0.0, 0.0]), where), extrinsic=extrinsic,
        ), where))
    if not cameras:
        raise ValueError(f"{path}: no camera tables ([cam_0], [cam_1], ...)")
    return cameras


def read_colmap(folder: Path) -> list[CameraCalibration]:
    """One camera per registered image of a COLMAP model, in natural order of the image names."""
    from page4d.interrupts import python_handlers_kept

    with python_handlers_kept():  # pycolmap installs glog's SIGTERM handler when it loads
        import pycolmap

    try:
        model = pycolmap.Reconstruction(str(folder))
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{folder}: cannot read the COLMAP model ({err})") from None
    cameras = []
    for image in sorted(model.images.values(), key=lambda im: natural_key(im.name)):
        camera = model.cameras[image.camera_id]
        where = f"{folder} image {image.name}"
        kind = camera.model.name
        if kind not in _COLMAP_PARAMS:
            raise ValueError(f"{where}: COLMAP camera model {kind} is not supported; use one of "
                             f"{', '.join(_COLMAP_PARAMS)} (undistort with COLMAP first for fisheye lenses)")
        p = dict(zip(_COLMAP_PARAMS[kind], np.asarray(camera.params, dtype=np.float64), strict=True))
        fx, fy = p.get("fx", p.get("f")), p.get("fy", p.get("f"))
        intrinsic = np.array([[fx, 0.0, p["cx"] - COLMAP_PIXEL_OFFSET], [0.0, fy, p["cy"] - COLMAP_PIXEL_OFFSET],
                              [0.0, 0.0, 1.0]])
        distortion = np.array([p.get(k, 0.0) for k in ("k1", "k2", "p1", "p2")])
        extrinsic = np.asarray(image.cam_from_world().matrix(), dtype=np.float64) if image.has_pose else None
        cameras.append(_checked(CameraCalibration(
            name=Path(image.name).stem, size=(int(camera.width), int(camera.height)), intrinsic=intrinsic,
            distortion=distortion, extrinsic=extrinsic,
        ), where))
    if not cameras:
        raise ValueError(f"{folder}: the COLMAP model has no images, so no camera can be matched to a view")
    return cameras


def read_cameras_json(path: Path) -> list[CameraCalibration]:
    """The cameras of a clip-layout ``cameras.json``, one per entry of ``view_ids``. K must not change over time
    (a zoom is not a rig calibration); the poses may, and are then kept per time step."""
    data = read_json(path, f"fix cameras.json: {CAMERAS_HINT}")
    try:
        time_ids, view_ids = [int(t) for t in data["time_ids"]], [int(v) for v in data["view_ids"]]
        intr, extr = np.asarray(data["K"], dtype=np.float64), np.asarray(data["E_w2c"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid cameras file ({type(err).__name__}: {err}); {CAMERAS_HINT}") from None
    shape = (len(time_ids), len(view_ids))
    if not time_ids or intr.shape != shape + (3, 3) or extr.shape != shape + (3, 4):
        raise ValueError(f"{path}: K has shape {list(intr.shape)} and E_w2c {list(extr.shape)}, expected "
                         f"{list(shape) + [3, 3]} and {list(shape) + [3, 4]} for its time_ids x view_ids")
    names = data.get("view_names", [f"view{v}" for v in view_ids])
    if not isinstance(names, list) or len(names) != len(view_ids):
        raise ValueError(f"{path}: view_names must list one name per view id ({len(view_ids)})")
    sizes = image_size_entries(path, data, len(view_ids))
    cameras = []
    for v, name in enumerate(names):
        where = f"{path} camera {name}"
        if not np.isfinite(intr[:, v]).all() or not np.isfinite(extr[:, v]).all():
            raise ValueError(f"{where}: the calibration of camera {name!r} contains NaN or Inf")
        if not np.allclose(intr[:, v], intr[0, v], rtol=1e-6, atol=1e-6):
            raise ValueError(f"{where}: K changes over time; a calibration has one K per camera")
        moving = not np.allclose(extr[:, v], extr[0, v], atol=1e-7)
        camera = CameraCalibration(
            name=str(name), size=None if sizes is None else (sizes[v][1], sizes[v][0]), intrinsic=intr[0, v],
            distortion=np.zeros(4), extrinsic=extr[:, v] if moving else extr[0, v],
            time_ids=tuple(time_ids) if moving else None,
        )
        for step in extr[:, v] if moving else extr[:1, v]:
            _checked(replace(camera, extrinsic=step), where)
        cameras.append(camera)
    return cameras


def _array(value: object, shape: tuple[int, ...], where: str, name: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be numbers of shape {list(shape)}, got {value!r}") from None
    if array.shape != shape:
        raise ValueError(f"{where}: {name} must have shape {list(shape)}, got {list(array.shape)}")
    return array


def _size(value: object, where: str) -> tuple[int, int]:
    size = _array(value, (2,), where, "size ([width, height])")
    if not (np.isfinite(size).all() and (size >= 1).all() and (size == np.round(size)).all()):
        raise ValueError(f"{where}: size must be [width, height] in whole pixels, got {value!r}")
    return int(size[0]), int(size[1])


def _distortion(value: object, where: str) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if values.ndim != 1 or len(values) > 4 and np.any(values[4:] != 0):
        raise ValueError(f"{where}: distortions must be [k1, k2, p1, p2] (OpenCV); higher-order terms are not "
                         f"supported, got {value!r}")
    return np.pad(values[:4], (0, 4 - min(len(values), 4)))


def _checked(camera: CameraCalibration, where: str) -> CameraCalibration:
    """``camera`` unchanged, or ``ValueError`` naming what makes it unusable."""
    k, ext = camera.intrinsic, camera.extrinsic
    numbers = [k, camera.distortion] + ([] if ext is None else [ext])
    if not all(np.isfinite(x).all() for x in numbers):
        raise ValueError(f"{where}: the calibration of camera {camera.name!r} contains NaN or Inf")
    if k[0, 0] <= 0 or k[1, 1] <= 0 or k[0, 1] != 0 or k[1, 0] != 0 or k[2].tolist() != [0.0, 0.0, 1.0]:
        raise ValueError(f"{where}: camera {camera.name!r} needs a pinhole K [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] "
                         f"with fx, fy > 0, got {k.tolist()}")
    if ext is not None:
        rot = ext[:, :3]
        if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-6) or np.linalg.det(rot) < 0:
            raise ValueError(f"{where}: the rotation of camera {camera.name!r} is not a rotation matrix "
                             "(orthonormal, determinant +1)")
    return camera
