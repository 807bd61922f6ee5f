"""Track head: a DPT feature extractor followed by the iterative tracker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from page4d.config import DPTHeadConfig, TrackHeadConfig
from page4d.heads.dpt import DPTHead
from page4d.heads.tracker import Tracker


@dataclass
class TrackPrediction:
    """Tracks of query points through all S = T·V frames."""

    tracks: list[torch.Tensor]
    """Per iteration ``[B, S, N, 2]`` (x, y) in image pixels; the last entry is final."""
    vis: torch.Tensor
    """Visibility probability ``[B, S, N]``."""
    conf: torch.Tensor | None
    """Confidence probability ``[B, S, N]``, None without ``predict_conf``."""


class TrackHead(nn.Module):
    """VGGT ``TrackHead``: keys ``feature_extractor.*`` (feature-only DPT) and ``tracker.*``."""

    def __init__(self, cfg: TrackHeadConfig, dim_in: int, patch_size: int = 14):
        super().__init__()
        self.cfg = cfg
        extractor_cfg = DPTHeadConfig(
            features=cfg.features,
            out_channels=cfg.out_channels,
            intermediate_layer_idx=cfg.intermediate_layer_idx,
            pos_embed=False,
            feature_only=True,
            down_ratio=2,
        )
        self.feature_extractor = DPTHead(extractor_cfg, dim_in, patch_size)
        self.tracker = Tracker(cfg)

    def forward(
        self,
        taps: Sequence[torch.Tensor],
        image_size: tuple[int, int],
        query_points: torch.Tensor,
        iters: int | None = None,
    ) -> TrackPrediction:
        """Track ``query_points`` ``[B, N, 2]``, pixel (x, y) in frame 0, through all frames.

        ``taps`` are the patch tokens ``[B, S, h*w, dim_in]`` of the ``intermediate_layer_idx``
        aggregator entries; ``image_size`` is (H, W).
        """
        fmaps = self.feature_extractor(taps, image_size)
        tracks, vis, conf = self.tracker(query_points, fmaps, self.cfg.iters if iters is None else iters)
        return TrackPrediction(tracks=tracks, vis=vis, conf=conf)
