"""Transformer building blocks shared by the encoder, the aggregator and the heads."""

from page4d.nn.attention import Attention, AttentionExtras, ChunkedBias, RowKeyBias, attend, set_attention_backend
from page4d.nn.block import Block, LayerScale
from page4d.nn.mlp import Mlp
from page4d.nn.rope import RotaryEmbedding2D, TimeRotation

__all__ = [
    "Attention",
    "AttentionExtras",
    "ChunkedBias",
    "Block",
    "LayerScale",
    "Mlp",
    "RotaryEmbedding2D",
    "RowKeyBias",
    "TimeRotation",
    "attend",
    "set_attention_backend",
]
