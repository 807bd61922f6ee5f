"""DINOv2 ViT with register tokens, used as VGGT's patch encoder.

Only the normalised patch tokens leave the encoder; its cls and register outputs are dropped.
The stored position embedding (a square grid) is resized to the input's patch grid with
antialiased bicubic interpolation in float32, as DINOv2 does, unless the grid already matches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from page4d.config import EncoderConfig
from page4d.encoder.conv import ConvPatchEmbed
from page4d.nn import Block


class DinoVisionTransformer(nn.Module):
    """``[N, 3, H, W] -> [N, h·w, C]``.

    Keys: ``cls_token`` [1,1,C], ``pos_embed`` [1,1+G²,C], ``register_tokens`` [1,R,C],
    ``mask_token`` [1,C] (kept for checkpoint compatibility; unused at inference and in training
    without masked-image objectives), ``patch_embed.proj``, ``blocks.{i}``, ``norm``.
    """

    def __init__(self, cfg: EncoderConfig, patch_size: int):
        super().__init__()
        c = cfg.embed_dim
        self.num_register_tokens = cfg.num_register_tokens
        self.grid = cfg.pos_embed_grid
        self.patch_embed = ConvPatchEmbed(c, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, c))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, c))
        self.mask_token = nn.Parameter(torch.zeros(1, c))
        self.blocks = nn.ModuleList(
            Block(
                c, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.proj_bias, cfg.ffn_bias,
                init_values=cfg.init_values, norm_eps=cfg.layernorm_eps,
            )
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(c, eps=cfg.layernorm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """Position embedding for cls + an ``h × w`` patch grid: ``[1, 1 + h·w, C]``."""
        if h == w == self.grid:
            return self.pos_embed
        pos = self.pos_embed.float()
        patch_pos = rearrange(pos[:, 1:], "1 (gh gw) c -> 1 c gh gw", gh=self.grid)
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        patch_pos = rearrange(patch_pos, "1 c h w -> 1 (h w) c")
        return torch.cat([pos[:, :1], patch_pos], dim=1).to(self.pos_embed.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        p = self.patch_embed.proj.kernel_size[0]
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + self.position_embedding(height // p, width // p).to(x.dtype)
        # Registers go after cls and carry no position embedding.
        x = torch.cat([x[:, :1], self.register_tokens.expand(n, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens :]
