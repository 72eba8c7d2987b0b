"""MAE decoder, one per modality (docs/method.md §3.2): reconstructs every patch from the visible tokens."""
from __future__ import annotations

import torch
from torch import nn

from xkd.config import DecoderConfig
from xkd.models.encoder import build_blocks
from xkd.models.position import LearnedToken, PositionEmbedding
from xkd.models.sizes import EncoderSize


class MaskedDecoder(nn.Module):
    """Linear from the encoder width, mask tokens at dropped positions, learned positions,
    transformer blocks, LayerNorm, Linear to the patch vector."""

    def __init__(self, encoder_dim: int, grid: tuple[int, ...], patch_dim: int, config: DecoderConfig):
        super().__init__()
        self.embed = nn.Linear(encoder_dim, config.embed_dim)
        self.mask_token = LearnedToken(config.embed_dim)
        self.position = PositionEmbedding(grid, config.embed_dim)
        self.blocks = build_blocks(EncoderSize(config.embed_dim, config.depth, config.num_heads))
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.predict = nn.Linear(config.embed_dim, patch_dim)

    def forward(self, encoded: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """encoded (B, 1+N_visible, D_enc) with CLS first -> predictions (B, N, patch_dim)."""
        x = self.embed(encoded)
        batch, num_tokens = ids_restore.shape
        num_masked = num_tokens - (x.shape[1] - 1)
        patches = torch.cat([x[:, 1:], self.mask_token().expand(batch, num_masked, -1)], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.position()
        for block in self.blocks:
            x = block(x)
        return self.predict(self.norm(x))[:, 1:]
