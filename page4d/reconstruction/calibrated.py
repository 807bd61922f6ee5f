"""A rig's calibration as an input of a reconstruction, and the check of the model against it.

``Calibration.for_clip`` reads a calibration (``page4d.data.calibration``), pairs its cameras with the clip's
views and fits each to its view's resolution. In the run, the calibrated K replaces the predicted one (at the
model input and the original resolution), lens distortion is removed from the frames before the model, and
when the calibration has poses every frame is re-expressed on its calibrated camera after a robust Sim(3) fit of
the predicted cameras gives the scale (``page4d.reconstruction.rig``): cameras, depth and points come out in the
calibration's world and units. :class:`CalibrationCheck` records how far the model's own cameras were from the
calibration, per camera: a free check of either.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from page4d.data.calibration import CameraCalibration, match_cameras, read_calibration
from page4d.data.clip import MultiViewClip
from page4d.data.lens import Lens
from page4d.reconstruction.rig import Similarity, camera_errors


@dataclass(frozen=True)
class Calibration:
    """The calibrated camera of each view of one clip, at the resolution of its frames."""

    cameras: list[CameraCalibration]
    source: str
    """Where the calibration came from (for messages and ``meta.json``)."""
    match: str
    """How the cameras were paired with the views (printed by the run)."""

    @classmethod
    def for_clip(cls, path: str | Path, clip: MultiViewClip) -> Calibration:
        """The calibration at ``path`` (any format ``read_calibration`` reads) for ``clip``'s views: matched by
        name else order, rescaled to each view's frames; ``ValueError`` naming what does not fit."""
        cameras, match = match_cameras(read_calibration(path), clip.view_names, str(path))
        fitted = []
        for camera, (height, width) in zip(cameras, clip.image_sizes, strict=True):
            try:
                fitted.append(camera.fitted_to(height, width))
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
        with_poses = [c.extrinsic is not None for c in fitted]
        if any(with_poses) and not all(with_poses):
            missing = [c.name for c in fitted if c.extrinsic is None]
            raise ValueError(f"{path}: camera(s) {', '.join(missing)} have no pose while the others do; give a pose "
                             "for every camera or for none")
        calibration = cls(fitted, str(path), match)
        if calibration.moving:
            missing = sorted({t for t in clip.time_ids for c in fitted if t not in c.time_ids})
            if missing:
                raise ValueError(f"{path}: the calibration has a pose per time step but none for time id(s) "
                                 f"{', '.join(map(str, missing[:5]))}; give a pose for every time step of the clip")
        return calibration

    @property
    def has_poses(self) -> bool:
        return self.cameras[0].extrinsic is not None

    @property
    def moving(self) -> bool:
        """True when the poses change over time (a pose per time step)."""
        return any(c.time_ids is not None for c in self.cameras)

    def intrinsics(self) -> np.ndarray:
        """``[V, 3, 3]`` float64 K of each view at its original resolution (undistorted: the same K)."""
        return np.stack([c.intrinsic for c in self.cameras])

    def poses(self, time_ids: list[int]) -> np.ndarray:
        """``[T, V, 3, 4]`` float64 world-to-camera of each view at ``time_ids`` (a static rig's, repeated)."""
        def at(camera: CameraCalibration, t: int) -> np.ndarray:
            if camera.time_ids is None:
                return camera.extrinsic
            return camera.extrinsic[camera.time_ids.index(t)]

        return np.stack([np.stack([at(c, t) for c in self.cameras]) for t in time_ids])

    def lenses(self) -> list[Lens | None] | None:
        """The lens of each view with distortion (None where there is none; None for a pinhole rig)."""
        lenses = [Lens(c.intrinsic, c.distortion, c.size) if c.has_lens_distortion else None for c in self.cameras]
        return lenses if any(lens is not None for lens in lenses) else None

    def applied_to(self, clip: MultiViewClip) -> MultiViewClip:
        """``clip`` with the lens distortion of its views to be removed from every frame."""
        return dataclasses.replace(clip, lenses=self.lenses())


@dataclass
class CalibrationCheck:
    """How far the predicted cameras are from the calibration, collected window by window."""

    names: list[str]
    rotation_deg: list[list[float]] = field(default_factory=list)
    centre: list[list[float]] = field(default_factory=list)
    focal: list[list[float]] = field(default_factory=list)
    scales: list[float | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        for errors in (self.rotation_deg, self.centre, self.focal):
            errors.extend([] for _ in self.names)

    def add_intrinsics(self, predicted: np.ndarray, calibrated: np.ndarray) -> None:
        """Predicted ``[T', V, 3, 3]`` and calibrated ``[V, 3, 3]`` K (same resolution): relative focal errors."""
        focal = (predicted[..., 0, 0] + predicted[..., 1, 1]) / 2
        truth = (calibrated[:, 0, 0] + calibrated[:, 1, 1]) / 2
        for v, errors in enumerate(self.focal):
            errors.extend((np.abs(focal[:, v] / truth[v] - 1)).tolist())

    def add_poses(self, predicted: np.ndarray, calibrated: np.ndarray, fit: Similarity) -> None:
        """Predicted and calibrated poses ``[T', V, 3, 4]`` of one window and the fit between them."""
        steps, views = predicted.shape[:2]
        angles, distances = camera_errors(predicted.reshape(-1, 3, 4), calibrated.reshape(-1, 3, 4), fit)
        for v in range(views):
            self.rotation_deg[v].extend(angles.reshape(steps, views)[:, v].tolist())
            self.centre[v].extend(distances.reshape(steps, views)[:, v].tolist())
        self.scales.append(fit.scale if fit.scale_known else None)

    def summary(self) -> dict:
        """Per camera the median over time steps of each error (``meta.json``'s ``calibration.check``)."""
        def median(values: list[float]) -> float | None:
            return round(float(np.median(values)), 6) if values else None

        cameras = {
            name: {"rotation_deg": median(self.rotation_deg[v]), "centre_distance": median(self.centre[v]),
                   "focal_error": median(self.focal[v])}
            for v, name in enumerate(self.names)
        }
        return {"cameras": cameras, "window_scales": [None if s is None else round(s, 6) for s in self.scales]}


def check_lines(check: dict) -> list[str]:
    """One line per camera of a ``CalibrationCheck.summary`` (as ``meta.json`` stores it) for a run's summary."""
    out = []
    for name, errors in check["cameras"].items():
        parts = [] if errors["focal_error"] is None else [f"focal {100 * errors['focal_error']:.1f} %"]
        if errors["rotation_deg"] is not None:
            parts = [f"rotation {errors['rotation_deg']:.2f}°", f"centre {errors['centre_distance']:.4g}", *parts]
        out.append(f"  {name}: {', '.join(parts)}")
    return out
