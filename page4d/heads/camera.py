"""Iterative camera head: refines a 9-d pose encoding per frame with an adaLN-modulated trunk."""

from __future__ import annotations

import torch
from torch import nn

from page4d.config import CameraHeadConfig
from page4d.conventions import POSE_ENCODING_DIM
from page4d.heads.activations import activate_pose
from page4d.nn import Block, Mlp


class CameraHead(nn.Module):
    """VGGT ``CameraHead`` (pose encoding ``absT_quaR_FoV``).

    Each iteration embeds the previous raw (un-activated) estimate, turns it into a
    (shift, scale, gate) modulation of the normalised camera tokens, runs the trunk across all
    frames and adds the predicted delta to the raw estimate.
    """

    def __init__(self, cfg: CameraHeadConfig, dim_in: int):
        super().__init__()
        self.cfg = cfg
        self.trunk = nn.Sequential(
            *[
                Block(dim_in, cfg.num_heads, cfg.mlp_ratio, init_values=cfg.init_values, qk_norm=False, norm_eps=1e-5)
                for _ in range(cfg.trunk_depth)
            ]
        )
        self.token_norm = nn.LayerNorm(dim_in, eps=1e-5)
        self.trunk_norm = nn.LayerNorm(dim_in, eps=1e-5)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_DIM))
        self.embed_pose = nn.Linear(POSE_ENCODING_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_ENCODING_DIM)

    def forward(self, camera_tokens: torch.Tensor, num_iterations: int | None = None) -> list[torch.Tensor]:
        """Camera tokens ``[B, S, dim_in]`` -> one activated pose encoding ``[B, S, 9]`` per iteration.

        The trunk attends across all S frames, so each frame's pose depends on the others.
        """
        iterations = self.cfg.num_iterations if num_iterations is None else num_iterations
        tokens = self.token_norm(camera_tokens)
        normed = self.adaln_norm(tokens)
        raw: torch.Tensor | None = None
        outputs = []
        for _ in range(iterations):
            if raw is None:
                cond = self.embed_pose(self.empty_pose_tokens.expand(*tokens.shape[:2], -1))
            else:
                # Like the reference: no backpropagation through earlier iterations.
                raw = raw.detach()
                cond = self.embed_pose(raw)
            shift, scale, gate = self.poseLN_modulation(cond).chunk(3, dim=-1)
            x = gate * (normed * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            raw = delta if raw is None else raw + delta
            outputs.append(activate_pose(raw, self.cfg.trans_act, self.cfg.quat_act, self.cfg.fl_act))
        return outputs
