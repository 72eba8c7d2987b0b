"""EMA teacher update when the student lives in a DeepSpeed ZeRO engine.

ZeRO-1/2 keep full student weights on every rank: plain eq. 13. ZeRO-3 partitions them, so
each chunk of student parameters is gathered (all ranks take part) before the update; the
teachers, outside the engine, stay full replicas on every rank.

The update runs in chunks of at most ``CHUNK_NUMEL`` elements: with bf16/fp16 students each
chunk's fp32 copy of the student weights is all that is made at once (~256 MB), instead of
an fp32 copy of the whole student (~1.7 GB for ViT-L video + ViT-B audio). The lerp is
elementwise, so the result is the same as one update over all pairs.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from xkd.ema import ema_update_

GATHER_CHUNK = 64  # parameters gathered at once under ZeRO-3 (bounds the extra memory)
CHUNK_NUMEL = 1 << 26  # elements per chunk: 256 MB of fp32 student copies at most

Pair = tuple[nn.Parameter, nn.Parameter]


def _numel(param: nn.Parameter) -> int:
    """Full element count, also of a ZeRO-3 partitioned parameter (whose local tensor is empty)."""
    return int(getattr(param, "ds_numel", param.numel()))


def chunk_pairs(pairs: list[Pair], max_numel: int = CHUNK_NUMEL, max_params: int | None = None) -> Iterator[list[Pair]]:
    """Consecutive chunks of ``pairs`` with at most ``max_numel`` student elements (a larger
    parameter is a chunk of its own) and at most ``max_params`` pairs."""
    chunk: list[Pair] = []
    size = 0
    for pair in pairs:
        n = _numel(pair[1])
        if chunk and (size + n > max_numel or (max_params is not None and len(chunk) >= max_params)):
            yield chunk
            chunk, size = [], 0
        chunk.append(pair)
        size += n
    if chunk:
        yield chunk


@torch.no_grad()
def ema_update_gathered(pairs: list[Pair], momentum: float, zero_stage: int, max_numel: int = CHUNK_NUMEL) -> None:
    if zero_stage < 3:
        for chunk in chunk_pairs(pairs, max_numel):
            ema_update_(chunk, momentum)
        return
    import deepspeed

    for chunk in chunk_pairs(pairs, max_numel, GATHER_CHUNK):
        with deepspeed.zero.GatheredParameters([student for _, student in chunk], modifier_rank=None):
            ema_update_(chunk, momentum)
