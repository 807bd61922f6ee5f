"""Update transformer of the tracker: time attention per track, space attention through virtual tracks."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from page4d.nn import Mlp


class SelfAttnBlock(nn.Module):
    """``x ← LN(x); x ← x + MHA(x); x ← x + MLP(LN2(x))``.

    The residual adds to the *normalised* input: that is what the reference blocks do. Attention
    keeps ``need_weights=True`` (the default): it selects the same kernels as the reference, which
    makes the outputs bit-identical on one CPU thread; the fused path drifts by ~1e-6 in ``vis``.
    Keys: ``norm1``, ``attn`` (``nn.MultiheadAttention``), ``norm2``, ``mlp.fc1/fc2``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, L, C]`` -> ``[N, L, C]``."""
        x = self.norm1(x)
        x = x + self.attn(x, x, x)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """Like ``SelfAttnBlock`` but the queries attend to a separately normalised context.

    Keys: ``norm1``, ``norm_context``, ``cross_attn``, ``norm2``, ``mlp.fc1/fc2``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Queries ``[N, L, C]``, context ``[N, M, C]`` -> ``[N, L, C]``."""
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context)[0]
        return x + self.mlp(self.norm2(x))


class UpdateFormer(nn.Module):
    """Maps per-track, per-frame inputs ``[B, N, S, input_dim]`` to updates ``[B, N, S, output_dim]``.

    Each of the ``depth`` rounds runs self-attention over frames for every track (virtual tracks
    included), then virtual ← point cross-attention, virtual self-attention and point ← virtual
    cross-attention within every frame. Keys match the reference, including ``virual_tracks``.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_size: int,
        output_dim: int,
        depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        num_virtual_tracks: int = 64,
    ):
        super().__init__()
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim)
        self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size))
        def blocks(kind: type[nn.Module]) -> nn.ModuleList:
            return nn.ModuleList([kind(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])

        self.time_blocks = blocks(SelfAttnBlock)
        self.space_virtual_blocks = blocks(SelfAttnBlock)
        self.space_point2virtual_blocks = blocks(CrossAttnBlock)
        self.space_virtual2point_blocks = blocks(CrossAttnBlock)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, S, input_dim]`` -> ``[B, N, S, output_dim]``."""
        batch, num_points, frames = x.shape[:3]
        init = self.input_transform(self.input_norm(x))
        virtual = self.virual_tracks.expand(batch, -1, frames, -1)
        tokens = torch.cat([init, virtual], dim=1)
        for time_block, v2p, virtual_block, p2v in zip(
            self.time_blocks,
            self.space_virtual2point_blocks,
            self.space_virtual_blocks,
            self.space_point2virtual_blocks,
            strict=True,
        ):
            tokens = rearrange(tokens, "b n s c -> (b n) s c")
            tokens = rearrange(time_block(tokens), "(b n) s c -> (b s) n c", b=batch)
            points, virtual = tokens[:, :num_points], tokens[:, num_points:]
            virtual = virtual_block(v2p(virtual, points))
            points = p2v(points, virtual)
            tokens = rearrange(torch.cat([points, virtual], dim=1), "(b s) n c -> b n s c", b=batch)
        tokens = tokens[:, :num_points] + init
        return self.flow_head(self.output_norm(tokens))
