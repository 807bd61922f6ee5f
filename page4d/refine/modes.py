"""What ``reconstruct`` may ask of the refinement, apart from the pipeline (which needs pycolmap only when it runs)."""

from __future__ import annotations

from dataclasses import dataclass

REFINE_MODES = ("none", "ba")
"""``none``: the forward pass as it is; ``ba``: cameras adjusted on feature tracks (``page4d.refine.pipeline``)."""


@dataclass(frozen=True)
class RefineOptions:
    """How tracks are found and what the adjustment may change."""

    search_fraction: float = 0.15
    """A keypoint's match is looked for within this fraction of the image diagonal of where the prediction puts it
    (cameras some degrees off move points by a few percent of the image)."""
    max_features: int = 4096
    min_points: int = 30
    """Fewer tracked points than this cannot constrain the cameras: the refinement is skipped; views that share
    fewer (a moving rig's step) keep their cameras."""
    refine_focal: bool = False
    """Adjust each camera's focal length too (one per camera, shared over time)."""
    refine_calibrated: bool = False
    """With a calibration's poses, let the adjustment move them too (by default they stay exactly as given)."""
    max_points: int = 20000
    max_error_px: float = 4.0
