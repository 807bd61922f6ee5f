"""Multi-view tracks: which pixels of which frames see one 3D point.

A track's observations are pixels at each view's original resolution, in page4d's convention (integer = pixel
centre). ``Tracks`` is a flat table of observations, one row each; ``from_matches`` joins pairwise matches of
keypoints into tracks (union-find), and :meth:`Tracks.per_image` folds the observations onto the images a
bundle adjustment solves for (one per camera for a static rig, one per frame otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tracks:
    """Observation ``i`` sees point ``point[i]`` in frame (``time[i]``, ``view[i]``) at pixel ``xy[i]``."""

    point: np.ndarray
    """``[M]`` int64 point index, ``0 .. num_points - 1``."""
    time: np.ndarray
    """``[M]`` int64 time-step index (position in the clip)."""
    view: np.ndarray
    """``[M]`` int64 view index."""
    xy: np.ndarray
    """``[M, 2]`` float64 pixel (x, y) at the view's original resolution."""

    @property
    def num_points(self) -> int:
        return int(self.point.max()) + 1 if len(self.point) else 0

    @property
    def lengths(self) -> np.ndarray:
        """``[num_points]`` observations per point."""
        return np.bincount(self.point, minlength=self.num_points)

    @property
    def num_across_views(self) -> int:
        """Points seen by two or more different views (what constrains the cameras' relative poses)."""
        pairs = np.unique(np.stack([self.point, self.view], axis=1), axis=0)
        return int((np.bincount(pairs[:, 0], minlength=self.num_points) >= 2).sum()) if len(pairs) else 0

    def subset(self, keep: np.ndarray) -> Tracks:
        """The observations ``keep`` (bool ``[M]``), points with fewer than two of them dropped, renumbered."""
        point, time, view, xy = self.point[keep], self.time[keep], self.view[keep], self.xy[keep]
        lengths = np.bincount(point, minlength=self.num_points)
        kept = lengths[point] >= 2
        _, renumbered = np.unique(point[kept], return_inverse=True)
        return Tracks(renumbered.astype(np.int64), time[kept], view[kept], xy[kept])

    @staticmethod
    def concat(parts: list[Tracks]) -> Tracks:
        """One table of ``parts``' observations, each part's points numbered after the previous parts'."""
        offsets = np.cumsum([0] + [p.num_points for p in parts[:-1]])
        return Tracks(np.concatenate([p.point + o for p, o in zip(parts, offsets, strict=True)]),
                      np.concatenate([p.time for p in parts]), np.concatenate([p.view for p in parts]),
                      np.concatenate([p.xy for p in parts]).reshape(-1, 2))

    def per_image(self, image: np.ndarray, tolerance_px: float = 2.0) -> Tracks:
        """Fold the observations onto ``image`` ``[M]`` (the image each one belongs to, e.g. its view for a static
        rig): where a point is seen more than once in one image (a static camera at several steps), the median
        pixel stands for all, unless they spread further than ``tolerance_px`` (then the point is dropped there).
        ``view`` becomes ``image`` and ``time`` the first step of each."""
        key = self.point * (int(image.max()) + 1) + image
        order = np.argsort(key, kind="stable")
        _, first, counts = np.unique(key[order], return_index=True, return_counts=True)
        sorted_xy = self.xy[order]
        xy = np.stack([np.median(sorted_xy[s : s + c], axis=0) for s, c in zip(first, counts, strict=True)])
        spread = np.array([np.abs(sorted_xy[s : s + c] - m).max() for s, c, m in zip(first, counts, xy,
                                                                                     strict=True)])
        rows = order[first]
        folded = Tracks(self.point[rows], self.time[rows], image[rows], xy)
        return folded.subset(spread <= tolerance_px)


def image_groups(point: np.ndarray, image: np.ndarray, count: int) -> np.ndarray:
    """``[count]`` the group of each of ``count`` images, images linked where they observe one point (observation
    ``i`` sees ``point[i]`` in ``image[i]``), each group named by its smallest image."""
    order = np.argsort(point, kind="stable")
    point, image = point[order], image[order]
    same = point[:-1] == point[1:]  # consecutive observations of one point link their images
    return connected(count, np.stack([image[:-1][same], image[1:][same]], axis=1))


def connected(count: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find: ``[count]`` the group of each of ``count`` items linked by ``pairs`` ``[P, 2]`` (indices),
    each group named by its smallest member."""
    parent = np.arange(count)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(count)], dtype=np.int64)


def from_matches(nodes: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Keypoints joined into tracks: ``nodes`` ``[N]`` frame ids, ``pairs`` ``[P, 2]`` matched positions into
    ``nodes``; returns ``[N]`` the track of each keypoint (its smallest matched position), -1 for unmatched ones,
    and -1 for a whole track that holds two keypoints of one frame (``nodes`` equal: an ambiguous chain)."""
    roots = connected(len(nodes), pairs)
    matched = np.zeros(len(nodes), dtype=bool)
    matched[pairs.reshape(-1)] = True
    track = np.where(matched, roots, -1)
    valid = track >= 0
    size = np.bincount(track[valid], minlength=len(nodes))
    frames = np.bincount(np.unique(np.stack([track[valid], nodes[valid]], axis=1), axis=0)[:, 0],
                         minlength=len(nodes))
    track[valid & (size[np.maximum(track, 0)] != frames[np.maximum(track, 0)])] = -1
    return track


@dataclass(frozen=True)
class TrackedPoints:
    """Refined 3D points ``xyz`` ``[N, 3]`` (output world) and their ``tracks``; a static rig's observations have
    ``time`` -1 (seen from the same pixel at every step)."""

    tracks: Tracks
    xyz: np.ndarray

    FILE = "tracks.npz"

    def arrays(self) -> dict[str, np.ndarray]:
        t = self.tracks
        return {"point": t.point, "time": t.time, "view": t.view, "xy": t.xy, "xyz": self.xyz}

    @classmethod
    def from_arrays(cls, data: dict[str, np.ndarray]) -> TrackedPoints:
        tracks = Tracks(*(np.asarray(data[k]) for k in ("point", "time", "view", "xy")))
        return cls(tracks, np.asarray(data["xyz"]))

    def at_step(self, t: int) -> TrackedPoints:
        """The observations made at step index ``t`` (a static rig's: all), points seen fewer than twice out."""
        keep = (self.tracks.time == t) | (self.tracks.time < 0)
        seen = np.bincount(self.tracks.point[keep], minlength=self.tracks.num_points)
        return TrackedPoints(self.tracks.subset(keep), self.xyz[seen >= 2])
