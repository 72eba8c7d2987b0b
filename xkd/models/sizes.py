"""Encoder size presets (docs/method.md §3.1): ViT-B and ViT-L as in the paper, tiny for CPU tests."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderSize:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


ENCODER_SIZES: dict[str, EncoderSize] = {
    "tiny": EncoderSize(embed_dim=64, depth=2, num_heads=4),
    "small": EncoderSize(embed_dim=384, depth=12, num_heads=6),
    "base": EncoderSize(embed_dim=768, depth=12, num_heads=12),  # ViT-B, ~87M with the cuboid embedding
    "large": EncoderSize(embed_dim=1024, depth=24, num_heads=16),  # ViT-L, ~305M
}
