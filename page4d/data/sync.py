"""Which frame of each camera's video belongs to which time step.

Two strategies over the same inputs (each video's presentation times, ``page4d.data.video.VideoTimes``):

* :class:`TimestampSync` (default): the time steps are the frames of the slowest camera that every camera covers,
  and each camera contributes its frame nearest in presentation time. Cameras at different frame rates or started
  at different moments line up, as long as their timestamps share a clock (a rig's recorder, or files trimmed to a
  common start with their offsets kept).
* :class:`IndexSync`: frame ``i`` of every video is time step ``i`` (cameras triggered together whose files each
  start at zero).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from page4d.data.video import VideoTimes

SYNC_MODES = ("timestamp", "index")


@dataclass(frozen=True)
class Timeline:
    """The candidate time steps of a set of videos, before any time selection."""

    time_ids: list[int]
    """An id per step: the frame index in the reference video."""
    positions: list[list[int]]
    """``[N][V]`` frame (presentation order) of each video at each step."""
    fps: float
    """Rate of the steps (the reference video's), for ``--fps``."""
    notes: list[str] = field(default_factory=list)


class Sync(ABC):
    """Pairs the frames of several videos into time steps."""

    @abstractmethod
    def timeline(self, videos: Sequence[VideoTimes]) -> Timeline:
        """The steps ``videos`` share, and notes saying what was done."""


def _lengths(videos: Sequence[VideoTimes]) -> str:
    return ", ".join(f"{v.path.name}: {v.count}" for v in videos)


class IndexSync(Sync):
    def timeline(self, videos: Sequence[VideoTimes]) -> Timeline:
        count = min(v.count for v in videos)
        notes = []
        if any(v.count != count for v in videos):
            notes.append(f"the videos differ in length ({_lengths(videos)} frames); using the first {count} of each")
        return Timeline(time_ids=list(range(count)), positions=[[i] * len(videos) for i in range(count)],
                        fps=videos[0].fps, notes=notes)


def _interval(times: np.ndarray) -> float:
    """Typical frame interval of a video (seconds); infinite for a single frame."""
    return float(np.median(np.diff(times))) if len(times) > 1 else float("inf")


def _span(video: VideoTimes) -> str:
    return f"{video.path.name} {video.times[0]:.3g}–{video.times[-1]:.3g} s"


class TimestampSync(Sync):
    """Nearest frames by presentation time; a step is kept only where every camera has a frame within half of its
    own frame interval (so no camera is stretched past its first or last frame)."""

    def timeline(self, videos: Sequence[VideoTimes]) -> Timeline:
        untimed = [v.path.name for v in videos if v.times is None]
        if untimed:
            raise ValueError(f"{', '.join(untimed)}: frames without presentation timestamps, so the cameras cannot "
                             "be synchronised by time; pass --sync index to pair frames by position")
        intervals = [_interval(v.times) for v in videos]
        reference = max(range(len(videos)), key=lambda v: (intervals[v], -v))
        steps = videos[reference].times
        nearest, offsets = [], []
        for video, interval in zip(videos, intervals, strict=True):
            last = len(video.times) - 1
            right = np.clip(np.searchsorted(video.times, steps), 0, last)
            left = np.clip(right - 1, 0, last)
            pick = np.where(np.abs(video.times[left] - steps) <= np.abs(video.times[right] - steps), left, right)
            nearest.append(pick)
            # a one-frame video is a still: it belongs to every step
            offsets.append(np.abs(video.times[pick] - steps) / interval)
        shared = np.all(np.stack(offsets) <= 0.5 + 1e-6, axis=0)
        if not shared.any():
            raise ValueError(f"the videos share no time ({', '.join(_span(v) for v in videos)}, by presentation "
                             "timestamp); if the cameras were started together but their clocks differ, pass "
                             "--sync index to pair frames by position")
        kept = np.flatnonzero(shared)
        positions = [[int(pick[i]) for pick in nearest] for i in kept]
        fps = videos[reference].fps or (1 / intervals[reference] if np.isfinite(intervals[reference]) else 0.0)
        return Timeline(time_ids=[int(i) for i in kept], positions=positions, fps=fps,
                        notes=self._notes(videos, intervals, reference, steps[kept], nearest, kept))

    @staticmethod
    def _notes(videos: Sequence[VideoTimes], intervals: list[float], reference: int, steps: np.ndarray,
               nearest: list[np.ndarray], kept: np.ndarray) -> list[str]:
        rates = [1 / interval for interval in intervals]
        starts = np.array([v.times[0] for v in videos])
        ends = np.array([v.times[-1] for v in videos])
        lag = [float(np.max(np.abs(v.times[pick[kept]] - steps))) for v, pick in zip(videos, nearest, strict=True)]
        notes = []
        if max(rates) - min(rates) > 0.01 * max(rates):
            worst = int(np.argmax(lag))
            notes.append(f"the videos run at {', '.join(f'{r:.4g}' for r in rates)} fps: time steps follow the slowest "
                         f"camera ({videos[reference].path.name}), each camera gives its frame nearest in "
                         f"presentation time (at most {lag[worst] * 1000:.0f} ms off, {videos[worst].path.name})")
        if np.ptp(starts) > 1e-3 or np.ptp(ends) > 1e-3:
            notes.append(f"the videos cover different times ({', '.join(_span(v) for v in videos)}, by presentation "
                         f"timestamp): using the {len(kept)} time steps from {steps[0]:.3g} to {steps[-1]:.3g} s "
                         "that all of them cover")
        if notes:
            notes.append("synchronised by presentation timestamp; --sync index pairs frames by position instead")
        return notes


SYNCS: dict[str, Sync] = {"timestamp": TimestampSync(), "index": IndexSync()}
