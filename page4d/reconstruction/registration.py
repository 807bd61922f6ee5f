"""How each window's frames are brought into the output world: the strategies of ``reconstruct``'s ``rig``.

* :class:`OverlapRegistration` (a moving rig): window ``k`` is moved by the Sim(3) that maps its depth points on
  the steps it shares with window ``k − 1`` onto those already placed (``page4d.reconstruction.windows``).
* :class:`CameraRegistration` (a static rig, or known cameras): every frame is re-expressed on a known camera
  (``page4d.reconstruction.rig``), after a robust Sim(3) of the window's cameras to the known ones gives the
  scale. The known cameras are a calibration's poses, or, for a static rig without one, one pose per camera
  averaged over every window's steps. Windows then align through the shared cameras, not through shared
  steps, so they need no overlap when V ≥ 2.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np

from page4d.reconstruction.calibrated import CalibrationCheck
from page4d.reconstruction.rig import Spread, fit_cameras, moved, re_express, rig_poses, spread, steps_aligned
from page4d.reconstruction.spool import StepArray
from page4d.reconstruction.windows import apply_sim3_to_outputs, fit_overlap

RigMode = Literal["static", "moving", "auto"]
RIG_MODES: tuple[RigMode, ...] = ("static", "moving", "auto")
STATIC_ROTATION_DEG = 10.0
"""``auto`` calls a rig static when no camera's per-step rotation strays further than this from its mean ..."""
STATIC_CENTRE_FRACTION = 0.1
"""... and no camera centre further than this fraction of the scene's median depth from its median."""

Window = dict[str, np.ndarray]
"""One window's outputs ``[T', V, ...]`` (``extrinsic``, ``depth``, ``depth_conf``, ``world_points``, ...)."""
Previous = tuple[slice, Window] | None
"""The steps a window shares with the previous one (indices in the previous window's kept steps, which open the
new window) and those kept steps, already registered; None for the first window."""


class Registration(ABC):
    """Moves one window (in place) into the output world."""

    @abstractmethod
    def register(self, arrays: Window, times: range, previous: Previous) -> None:
        """Register the window of ``times`` (positions in the clip)."""

    @abstractmethod
    def finish(self, out: dict[str, np.ndarray | StepArray]) -> None:
        """After the last window: adjust the whole clip's outputs (``[T, V, ...]``, in place) if the registration
        learnt more on the way."""


def _overlap_sim3(arrays: Window, previous: tuple[slice, Window]) -> tuple[float, np.ndarray, np.ndarray]:
    shared, aligned = previous

    def frames(source: Window, steps: slice) -> Window:
        keys = ("depth", "depth_conf", "extrinsic", "intrinsic")
        return {k: source[k][steps].reshape(-1, *source[k].shape[2:]) for k in keys}

    return fit_overlap(frames(aligned, shared), frames(arrays, slice(0, shared.stop - shared.start)))


class OverlapRegistration(Registration):
    """A moving rig: each window keeps its own cameras, moved by the Sim(3) of its overlap with the previous one."""

    def register(self, arrays: Window, times: range, previous: Previous) -> None:
        if previous is not None:
            apply_sim3_to_outputs(arrays, *_overlap_sim3(arrays, previous))

    def finish(self, out: dict[str, np.ndarray | StepArray]) -> None:
        """Nothing to adjust: each window was final once placed on the one before."""


class CameraRegistration(Registration):
    """Every frame placed on a known camera: the calibration's (``known``) or the static rig's own.

    A static rig's own cameras are first averaged over the first window's steps (its world and units become the
    output's); each later window is fitted to them, and its cameras, so moved, join the average. After the last
    window every frame moves (rigidly, per camera) onto the average over all windows."""

    def __init__(self, known: np.ndarray | None, check: CalibrationCheck | None = None):
        """``known``: ``[T, V, 3, 4]`` world-to-camera of every step of the clip, or None for a static rig without
        calibration. ``check`` collects the model's camera errors against ``known``."""
        self.known = known
        self.check = check
        self.seen: list[np.ndarray] | None = [] if known is None else None
        """A static rig's predicted cameras of every window, in the output world (``[N, V, 3, 4]`` each)."""

    def register(self, arrays: Window, times: range, previous: Previous) -> None:
        steps = len(times)
        if self.known is None:  # the rig's cameras, in the first window's world and units
            self.seen.append(arrays["extrinsic"].astype(np.float64))
            self.known = rig_poses(arrays["extrinsic"])[None]
            re_express(arrays, np.broadcast_to(self.known, arrays["extrinsic"].shape), 1.0)
            return
        known = self.known[times.start : times.stop] if len(self.known) > 1 else np.broadcast_to(
            self.known, (steps, *self.known.shape[1:]))
        predicted = arrays["extrinsic"].astype(np.float64)
        fit = fit_cameras(predicted.reshape(-1, 3, 4), known.reshape(-1, 3, 4))
        scale = fit.scale
        if not fit.scale_known and previous is not None and self.check is None:
            scale = _overlap_sim3(arrays, previous)[0]  # one camera: the scale only comes from the shared steps
        if self.check is not None:
            self.check.add_poses(predicted, known, fit)
        if self.seen is not None:
            placed = moved(predicted.reshape(-1, 3, 4), dataclasses.replace(fit, scale=scale))
            self.seen.append(placed.reshape(predicted.shape))
        re_express(arrays, np.ascontiguousarray(known), scale)

    def finish(self, out: dict[str, np.ndarray | StepArray]) -> None:
        if self.seen is None or len(self.seen) < 2:
            return
        final = rig_poses(np.concatenate(self.seen))[None]
        re_express_clip(out, final, 1.0)
        self.known = final


def re_express_clip(out: dict[str, np.ndarray | StepArray], cameras: np.ndarray, scale: float | np.ndarray) -> None:
    """:func:`re_express` over a whole clip's outputs (``[T, V, ...]``, dense ones possibly spooled), one step at a
    time: ``cameras`` ``[T, V, 3, 4]`` or ``[1, V, 3, 4]`` for every step."""
    for t in range(len(out["extrinsic"])):
        step = {k: np.array(out[k][t : t + 1]) for k in ("extrinsic", "depth", "world_points")}
        re_express(step, cameras[t if len(cameras) > 1 else 0][None], scale)
        out["extrinsic"][t] = step["extrinsic"][0]
        for key in ("depth", "world_points"):
            if isinstance(out[key], StepArray):
                out[key].write(t, step[key][0])
            else:
                out[key][t] = step[key][0]


@dataclass(frozen=True)
class RigDecision:
    """What ``--rig`` resolved to, and why."""

    mode: Literal["static", "moving"]
    reason: str
    spread: Spread | None = None

    def meta(self, names: list[str]) -> dict:
        out: dict = {"mode": self.mode, "reason": self.reason}
        if self.spread is not None:
            out["spread"] = {name: {"rotation_deg": round(float(self.spread.rotation_deg[v]), 4),
                                    "centre": round(float(self.spread.centre[v]), 6)} for v, name in enumerate(names)}
        return out


Calibrated = Literal["none", "static", "moving"]
"""What a calibration's poses say: none (no poses or no calibration), one per camera, one per time step."""


def check_rig(rig: RigMode, calibrated: Calibrated) -> None:
    """``ValueError`` for a ``rig`` the calibration's poses contradict (checked before any work)."""
    if rig not in RIG_MODES:
        raise ValueError(f"rig {rig!r}: give one of {', '.join(RIG_MODES)}")
    if calibrated != "none" and rig not in ("auto", calibrated):
        raise ValueError(f"--rig {rig}, but the calibration has " + (
            "one pose per camera, which describes a static rig; for a moving rig give intrinsics only, or a pose "
            "per time step (a cameras.json)" if calibrated == "static" else
            "a pose per time step, which describes a moving rig; give --rig moving or auto"))


def decide_rig(rig: RigMode, first: Window, calibrated: Calibrated, per_step: bool = False) -> RigDecision:
    """Resolve ``rig`` from the first window's predictions (``auto``) or the calibration's poses.

    ``per_step``: the window's steps were predicted on their own (attention plan ``per-step``), each in its own
    frame and scale; the spread is measured once each step is aligned to the others by a similarity, so it says
    whether the cameras move relative to one another, and a rig that moves as a whole looks static. Such steps
    can only be registered through a static rig (or calibrated poses, decided before), so ``auto`` refuses a rig
    it finds moving."""
    check_rig(rig, calibrated)
    if calibrated != "none":
        how = "one pose per camera" if calibrated == "static" else "a pose per time step"
        return RigDecision(calibrated, f"the calibration has {how}")
    if rig != "auto":
        return RigDecision(rig, f"--rig {rig}")
    steps = first["extrinsic"].shape[0]
    if steps == 1:
        return RigDecision("static", "one time step")
    # per-step: each step's own frame and scale says nothing of the rig's motion; compare the steps once aligned
    found = spread(steps_aligned(first["extrinsic"]) if per_step else first["extrinsic"])
    depth = first["depth"][:1] if per_step else first["depth"]
    depth = depth[np.isfinite(depth) & (depth > 0)]
    extent = float(np.median(depth)) if depth.size else 1.0
    rotation, centre = float(found.rotation_deg.max()), float(found.centre.max())
    static = rotation <= STATIC_ROTATION_DEG and centre <= STATIC_CENTRE_FRACTION * extent
    reason = (f"auto: over the first {steps} steps the cameras stray at most {rotation:.1f}° and {centre:.3g} "
              f"({100 * centre / extent:.1f} % of the median depth) from one pose each; the thresholds are "
              f"{STATIC_ROTATION_DEG:g}° and {100 * STATIC_CENTRE_FRACTION:g} %")
    if per_step and not static:
        raise ValueError(f"attention per-step needs a static rig, and the cameras move "
                         f"({reason.removeprefix('auto: ')}); if the rig is static and only the model's cameras "
                         "jitter, say so with --rig static; else give --cameras with a pose per time step, or use "
                         "--attention set (or auto)")
    if per_step:
        reason += "; per-step sees each step in its own frame, so it cannot see a rig that moves as a whole"
    return RigDecision("static" if static else "moving", reason, found)
