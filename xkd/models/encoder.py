"""ViT encoder for one modality: patch embedding, CLS, learned positions, timm blocks.

The transformer blocks are timm's pre-norm ``Block`` (MLP ratio 4, fused attention) and
can be passed in, so that the modality-agnostic variants (MAS, MATS) share one stack of
blocks between the audio and the video encoder while embeddings and norms stay separate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.models.vision_transformer import Block
from torch import nn

from xkd.models.masking import random_masking
from xkd.models.position import LearnedToken, PositionEmbedding
from xkd.models.sizes import EncoderSize


def build_blocks(size: EncoderSize, drop_path: float = 0.0) -> nn.ModuleList:
    # Python floats on the CPU, so that the blocks can also be built under torch.device("meta").
    rates = torch.linspace(0, drop_path, size.depth, device="cpu").tolist()
    return nn.ModuleList(
        Block(size.embed_dim, size.num_heads, mlp_ratio=size.mlp_ratio, qkv_bias=True, drop_path=rate)
        for rate in rates
    )


def cls_attention(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Attention of the CLS query to the N patch keys in ``block``, per head (paper eq. 3; docs/method.md §4.2).

    softmax(q_cls k^T / sqrt(d)) over all N+1 keys, then the CLS column is dropped.
    Only the CLS query and the keys are projected (a slice of the qkv weight), so this
    costs a fraction of the block; the block itself still runs fused attention.

    Args:
        x: (B, 1+N, D) input of ``block``. Returns (B, H, N).
    """
    attn = block.attn
    h = block.norm1(x)
    dim = attn.attn_dim
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q_bias = bias[:dim] if bias is not None else None
    k_bias = bias[dim : 2 * dim] if bias is not None else None
    batch, tokens, _ = h.shape
    query = F.linear(h[:, :1], weight[:dim], q_bias).reshape(batch, 1, attn.num_heads, attn.head_dim)
    keys = F.linear(h, weight[dim : 2 * dim], k_bias).reshape(batch, tokens, attn.num_heads, attn.head_dim)
    query, keys = attn.q_norm(query.transpose(1, 2)), attn.k_norm(keys.transpose(1, 2))
    scores = (query * attn.scale) @ keys.transpose(-2, -1)  # (B, H, 1, 1+N)
    return scores.softmax(dim=-1)[:, :, 0, 1:]


@dataclass
class EncoderOutput:
    tokens: torch.Tensor  # (B, 1+N_visible, D) after the final LayerNorm, CLS first
    grid: tuple[int, ...]  # token grid of the input view
    mask: torch.Tensor | None = None  # (B, N) 1 = masked; None when nothing was masked
    ids_restore: torch.Tensor | None = None  # (B, N)
    attention: torch.Tensor | None = None  # (B, H, N_visible) CLS attention of the last block

    @property
    def patch_tokens(self) -> torch.Tensor:
        return self.tokens[:, 1:]

    def pooled(self) -> torch.Tensor:
        """The view's representation: mean of last-layer patch tokens, CLS excluded (docs/method.md §3.1)."""
        return self.tokens[:, 1:].mean(dim=1)


class ModalityEncoder(nn.Module):
    """Encoder of one modality (student or teacher).

    Args:
        patch_embed: ``VideoPatchEmbedding`` or ``AudioPatchEmbedding``.
        grid: token grid of the global view (the learned position table's grid).
        blocks: transformer blocks; pass another encoder's ``blocks`` to share them.
    """

    def __init__(self, patch_embed: nn.Module, grid: tuple[int, ...], size: EncoderSize, blocks: nn.ModuleList):
        super().__init__()
        self.patch_embed = patch_embed
        self.embed_dim = size.embed_dim
        self.num_heads = size.num_heads
        self.cls_token = LearnedToken(size.embed_dim)
        self.position = PositionEmbedding(grid, size.embed_dim)
        self.blocks = blocks
        self.norm = nn.LayerNorm(size.embed_dim, eps=1e-6)
        # model.activation_checkpointing: recompute each block in the backward pass instead of
        # keeping its activations (training with gradients only; see set_activation_checkpointing).
        self.activation_checkpointing = False

    def _block(self, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            # Non-reentrant: works with DeepSpeed ZeRO-3 hooks and inputs that need no grad; the RNG
            # state (stochastic depth) is restored for the recomputation, so results are unchanged.
            return torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)
        return block(h)

    def forward(
        self,
        x: torch.Tensor,
        mask_ratio: float = 0.0,
        return_attention: bool = False,
    ) -> EncoderOutput:
        grid = self.patch_embed.grid(x.shape)
        position = self.position(grid)
        tokens = self.patch_embed(x) + position[:, 1:]
        mask = ids_restore = None
        if mask_ratio > 0:
            tokens, mask, ids_restore = random_masking(tokens, mask_ratio)
        cls = (self.cls_token() + position[:, :1]).expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens], dim=1)
        for block in self.blocks[:-1]:
            h = self._block(block, h)
        attention = cls_attention(self.blocks[-1], h) if return_attention else None
        h = self.norm(self._block(self.blocks[-1], h))
        return EncoderOutput(tokens=h, grid=grid, mask=mask, ids_restore=ids_restore, attention=attention)


def set_activation_checkpointing(module: nn.Module, enabled: bool) -> int:
    """Turn activation checkpointing of the transformer blocks on or off in every
    :class:`ModalityEncoder` inside ``module``; returns how many encoders were set."""
    encoders = [m for m in module.modules() if isinstance(m, ModalityEncoder)]
    for encoder in encoders:
        encoder.activation_checkpointing = bool(enabled)
    return len(encoders)
