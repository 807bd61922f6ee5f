"""Iterative point tracker on DPT feature maps (VGGT ``BaseTrackerPredictor``, CoTracker / VGGSfM style)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from page4d.config import TrackHeadConfig
from page4d.heads.embeddings import flow_embedding, grid_pos_embed
from page4d.heads.updateformer import UpdateFormer
from page4d.nn import Mlp


def sample_bilinear(fmap: torch.Tensor, xy: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """Sample ``fmap`` ``[N, C, H, W]`` at pixel coordinates ``xy`` ``[N, Ho, Wo, 2]`` -> ``[N, C, Ho, Wo]``.

    Integer coordinates are pixel centres (``align_corners=True``). As in the reference, no
    gradient flows into the sampling positions.
    """
    height, width = fmap.shape[-2:]
    scale = torch.tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)], device=xy.device, dtype=fmap.dtype)
    grid = xy.detach().to(fmap.dtype) * scale - 1
    return F.grid_sample(fmap, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def sample_points(fmap: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Features ``[B, C, H, W]`` at points ``[B, N, 2]`` (border padding) -> ``[B, N, C]``."""
    return rearrange(sample_bilinear(fmap, xy[:, :, None], "border"), "b c n 1 -> b n c")


class CorrelationPyramid:
    """Average-pooled feature pyramid; looks up local correlation windows around track positions."""

    def __init__(self, fmaps: torch.Tensor, num_levels: int, radius: int):
        """``fmaps`` ``[B, S, C, H, W]``; level l is pooled 2^l times."""
        self.levels = [fmaps]
        for _ in range(num_levels - 1):
            pooled = F.avg_pool2d(rearrange(self.levels[-1], "b s c h w -> (b s) c h w"), kernel_size=2, stride=2)
            self.levels.append(rearrange(pooled, "(b s) c h w -> b s c h w", b=fmaps.shape[0]))
        side = torch.linspace(-radius, radius, 2 * radius + 1, device=fmaps.device, dtype=fmaps.dtype)
        # offsets[a, b] = (x = side[a], y = side[b]): the flattened window has x as the slow index.
        off_x, off_y = torch.meshgrid(side, side, indexing="ij")
        self.offsets = torch.stack([off_x, off_y], dim=-1)

    def sample(self, feats: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Track features ``[B, S, N, C]`` at ``coords`` ``[B, S, N, 2]`` -> ``[B, S, N, levels·(2r+1)²]``."""
        batch, frames, points = coords.shape[:3]
        window = self.offsets.to(coords.dtype)[None]
        out = []
        for level, fmap in enumerate(self.levels):
            channels, height, width = fmap.shape[2:]
            corr = torch.matmul(feats, fmap.reshape(batch, frames, channels, height * width)) / math.sqrt(channels)
            centres = rearrange(coords, "b s n t -> (b s n) 1 1 t") / (2**level)
            sampled = sample_bilinear(
                rearrange(corr, "b s n (h w) -> (b s n) 1 h w", h=height), centres + window, "zeros"
            )
            out.append(sampled.reshape(batch, frames, points, -1))
        return torch.cat(out, dim=-1)


class Tracker(nn.Module):
    """Refines tracks of query points (frame 0) through all frames with an update transformer.

    Keys: ``corr_mlp``, ``query_ref_token``, ``updateformer.*``, ``fmap_norm``, ``ffeat_norm``,
    ``ffeat_updater.0``, ``vis_predictor.0`` and, with ``predict_conf``, ``conf_predictor.0``.
    """

    def __init__(self, cfg: TrackHeadConfig):
        super().__init__()
        self.cfg = cfg
        latent = cfg.features
        self.transformer_dim = 3 * latent + 4
        self.corr_mlp = Mlp(cfg.corr_levels * (2 * cfg.corr_radius + 1) ** 2, cfg.hidden_size, latent)
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, self.transformer_dim))
        self.updateformer = UpdateFormer(
            self.transformer_dim,
            cfg.hidden_size,
            latent + 2,
            depth=cfg.tracker_depth,
            num_heads=cfg.tracker_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            num_virtual_tracks=cfg.num_virtual_tracks,
        )
        self.fmap_norm = nn.LayerNorm(latent)
        self.ffeat_norm = nn.GroupNorm(1, latent)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent, latent), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent, 1))
        if cfg.predict_conf:
            self.conf_predictor = nn.Sequential(nn.Linear(latent, 1))

    def forward(
        self, query_points: torch.Tensor, fmaps: torch.Tensor, iters: int
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Track ``query_points`` ``[B, N, 2]``: (x, y) in frame 0, in pixels of ``fmaps`` × ``stride``.

        ``fmaps`` ``[B, S, C, h, w]``. Returns per-iteration tracks ``[B, S, N, 2]`` (in the
        query's pixel units), visibility ``[B, S, N]`` and confidence ``[B, S, N]`` (or None).
        """
        batch, frames, latent, height, width = fmaps.shape
        points = query_points.shape[1]
        stride = self.cfg.stride
        fmaps = rearrange(self.fmap_norm(rearrange(fmaps, "b s c h w -> b s h w c")), "b s h w c -> b s c h w")
        query = query_points / float(stride)
        pyramid = CorrelationPyramid(fmaps, self.cfg.corr_levels, self.cfg.corr_radius)

        track_feats = sample_points(fmaps[:, 0], query)[:, None].expand(-1, frames, -1, -1)
        pos_grid = grid_pos_embed(self.transformer_dim, height, width, fmaps.device)
        pos = sample_points(pos_grid.expand(batch, -1, -1, -1), query)
        pos = rearrange(pos, "b n d -> (b n) 1 d")
        ref = self.query_ref_token
        ref_token = torch.cat([ref[:, :1], ref[:, 1:].expand(-1, frames - 1, -1)], dim=1)

        coords = query[:, None].expand(-1, frames, -1, -1)
        tracks = []
        for _ in range(iters):
            # Like the reference: no backpropagation through earlier iterations' positions.
            coords = coords.detach()
            corr = self.corr_mlp(rearrange(pyramid.sample(track_feats, coords), "b s n l -> (b n) s l"))
            flows = rearrange(coords - coords[:, :1], "b s n t -> (b n) s t")
            flow_emb = torch.cat(
                [flow_embedding(flows, latent // 2), flows / self.cfg.max_scale, flows / self.cfg.max_scale], dim=-1
            )
            feats = rearrange(track_feats, "b s n c -> (b n) s c")
            x = torch.cat([flow_emb, corr, feats], dim=-1) + pos
            x = x + ref_token.to(x.dtype)
            delta = self.updateformer(rearrange(x, "(b n) s d -> b n s d", b=batch))

            feats = feats.reshape(-1, latent)
            feats = self.ffeat_updater(self.ffeat_norm(delta[..., 2:].reshape(-1, latent))) + feats
            track_feats = rearrange(feats, "(b n s) c -> b s n c", b=batch, n=points)
            coords = coords + rearrange(delta[..., :2], "b n s t -> b s n t")
            coords = torch.cat([query[:, None], coords[:, 1:]], dim=1)
            tracks.append(coords * stride)

        vis = torch.sigmoid(self.vis_predictor(track_feats).squeeze(-1))
        conf = torch.sigmoid(self.conf_predictor(track_feats).squeeze(-1)) if self.cfg.predict_conf else None
        return tracks, vis, conf
