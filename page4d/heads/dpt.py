"""DPT dense head: fuses four token taps into a full-resolution map (VGGT ``DPTHead``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from page4d.config import DPTHeadConfig
from page4d.heads.activations import activate_dense
from page4d.heads.embeddings import uv_pos_embed

POS_EMBED_RATIO = 0.1


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ResidualConvUnit(nn.Module):
    """``relu(x) + conv2(relu(conv1(relu(x))))``.

    The residual is ``relu(x)``, not ``x``: the reference applies its first ReLU in place on the
    input before the skip connection reads it.
    """

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    """``out_conv(up(RCU2(x + RCU1(skip))))``; the coarsest block has no skip and no ``resConfUnit1``."""

    def __init__(self, features: int, has_skip: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        if has_skip:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``x``, ``skip`` ``[N, F, h, w]`` -> ``[N, F, *size]`` (``size`` None: twice the input size)."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        return self.out_conv(_upsample(x, size))


class DPTHead(nn.Module):
    """Dense prediction from four aggregator taps (patch tokens only).

    Keys follow the reference: ``norm``, ``projects.{i}``, ``resize_layers.{0,1,3}``,
    ``scratch.layer{1..4}_rn``, ``scratch.refinenet{1..4}``, ``scratch.output_conv1`` and, unless
    ``feature_only``, ``scratch.output_conv2.{0,2}``.
    """

    def __init__(self, cfg: DPTHeadConfig, dim_in: int, patch_size: int = 14):
        super().__init__()
        self.cfg = cfg
        self.patch_size = patch_size
        oc = cfg.out_channels
        feats = cfg.features
        self.norm = nn.LayerNorm(dim_in, eps=1e-5)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, c, kernel_size=1) for c in oc])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for i, c in enumerate(oc, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, feats, kernel_size=3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(feats, has_skip=i != 4))
        conv1_out = feats if cfg.feature_only else feats // 2
        self.scratch.output_conv1 = nn.Conv2d(feats, conv1_out, kernel_size=3, padding=1)
        if not cfg.feature_only:
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(conv1_out, cfg.head_features_2, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(cfg.head_features_2, cfg.output_dim, kernel_size=1),
            )

    def forward(
        self, taps: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens of the ``intermediate_layer_idx`` entries, each ``[B, S, h*w, dim_in]``.

        Returns ``(pred [B, S, H, W, output_dim-1], conf [B, S, H, W])``, or with ``feature_only``
        the features ``[B, S, features, H/down_ratio, W/down_ratio]``. Frames are processed in
        chunks of ``frames_chunk_size``; every operation is per frame, so results do not depend on it.
        """
        if len(taps) != len(self.projects):
            raise ValueError(f"expected {len(self.projects)} token taps, got {len(taps)}")
        num_frames = taps[0].shape[1]
        step = self.cfg.frames_chunk_size or num_frames
        chunks = [
            self._forward_frames([t[:, s : s + step] for t in taps], image_size) for s in range(0, num_frames, step)
        ]
        if self.cfg.feature_only:
            return torch.cat(chunks, dim=1)
        preds, confs = zip(*chunks, strict=True)
        return torch.cat(preds, dim=1), torch.cat(confs, dim=1)

    def _add_pos_embed(self, x: torch.Tensor, aspect_ratio: float) -> torch.Tensor:
        emb = uv_pos_embed(x.shape[-2], x.shape[-1], x.shape[1], aspect_ratio, x.device).to(x.dtype)
        return x + emb * POS_EMBED_RATIO

    def _forward_frames(
        self, taps: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch, frames = taps[0].shape[:2]
        height, width = image_size
        h, w = height // self.patch_size, width // self.patch_size
        aspect_ratio = width / height
        levels = []
        for project, resize, tokens in zip(self.projects, self.resize_layers, taps, strict=True):
            x = self.norm(tokens)
            x = rearrange(x, "b s (h w) c -> (b s) c h w", h=h, w=w)
            x = project(x)
            if self.cfg.pos_embed:
                x = self._add_pos_embed(x, aspect_ratio)
            levels.append(resize(x))

        out = self._fuse(levels)
        ratio = self.cfg.down_ratio
        out = _upsample(out, (int(h * self.patch_size / ratio), int(w * self.patch_size / ratio)))
        if self.cfg.pos_embed:
            out = self._add_pos_embed(out, aspect_ratio)
        if self.cfg.feature_only:
            return rearrange(out, "(b s) c h w -> b s c h w", b=batch, s=frames)

        pred, conf = activate_dense(self.scratch.output_conv2(out), self.cfg.activation, self.cfg.conf_activation)
        pred = rearrange(pred, "(b s) h w c -> b s h w c", b=batch, s=frames)
        conf = rearrange(conf, "(b s) h w -> b s h w", b=batch, s=frames)
        return pred, conf

    def _fuse(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Coarse-to-fine fusion of the four resized levels; output ``[N, *, 8h, 8w]``."""
        s = self.scratch
        r1, r2, r3, r4 = (getattr(s, f"layer{i}_rn")(x) for i, x in enumerate(levels, start=1))
        out = s.refinenet4(r4, size=r3.shape[-2:])
        out = s.refinenet3(out, r3, size=r2.shape[-2:])
        out = s.refinenet2(out, r2, size=r1.shape[-2:])
        out = s.refinenet1(out, r1)
        return s.output_conv1(out)
