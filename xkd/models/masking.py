"""MAE-style random token masking (docs/method.md §2.3)."""
from __future__ import annotations

import torch


def num_visible(num_tokens: int, mask_ratio: float) -> int:
    """Tokens kept after masking: round(N * (1 - r)), e.g. 392 -> 59 at r=0.85, 560 -> 112 at r=0.8."""
    return int(round(num_tokens * (1.0 - mask_ratio)))


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of tokens per sample (argsort of uniform noise).

    Args:
        tokens: (B, N, D) patch tokens, position embeddings already added.
    Returns:
        visible: (B, N_keep, D) kept tokens in shuffled order.
        mask: (B, N) with 1 for masked (dropped) tokens, 0 for kept, in original order.
        ids_restore: (B, N) indices that undo the shuffle (for the decoder).
    """
    batch, num_tokens, dim = tokens.shape
    keep = num_visible(num_tokens, mask_ratio)
    noise = torch.rand(batch, num_tokens, device=tokens.device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(batch, num_tokens, device=tokens.device, dtype=tokens.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return visible, mask, ids_restore
