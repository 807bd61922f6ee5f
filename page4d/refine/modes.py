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
    max_rejected_fraction: float = 0.5
    """An adjustment that rejects this fraction of its observations or more as outliers has not converged (cameras too
    far off for it, or matches that agree on something wrong, e.g. repetitive texture): its result is refused."""
    max_depth_disagreement: float = 1.5
    """A tracked point whose refined depth in a view differs from the predicted depth there by more than this
    factor (after the view's median depth scale) is a wrong match: it is removed and the cameras adjusted again."""
    max_depth_scale_spread: float = 2.0
    """The forward pass's depths share one scale: refined points whose depths differ from the predicted ones by
    factors further apart than this from view to view are not the surfaces it saw, and the result is refused."""
    fallback: bool = True
    """When the adjustment from the predicted cameras fails, or turns a camera further than the guided search
    could follow (a turn that moves points by more than the search radius, ``atan(radius / focal)``: its matches
    were then found where the wrong cameras looked, a biased few): match exhaustively, register the images with
    pycolmap's mapper, adjust from its cameras (``page4d.refine.mapper``), and keep whichever result more of the
    exhaustive matches agree with."""
