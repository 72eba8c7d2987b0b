"""EMA teacher update when the student lives in a DeepSpeed ZeRO engine.

ZeRO-1/2 keep full student weights on every rank: plain eq. 13. ZeRO-3 partitions them, so
each chunk of student parameters is gathered (all ranks take part) before the update; the
teachers, outside the engine, stay full replicas on every rank.
"""
from __future__ import annotations

import torch
from torch import nn

from xkd.ema import ema_update_

GATHER_CHUNK = 64  # parameters gathered at once under ZeRO-3 (bounds the extra memory)


@torch.no_grad()
def ema_update_gathered(pairs: list[tuple[nn.Parameter, nn.Parameter]], momentum: float, zero_stage: int) -> None:
    if zero_stage < 3:
        ema_update_(pairs, momentum)
        return
    import deepspeed

    for start in range(0, len(pairs), GATHER_CHUNK):
        chunk = pairs[start : start + GATHER_CHUNK]
        with deepspeed.zero.GatheredParameters([student for _, student in chunk], modifier_rank=None):
            ema_update_(chunk, momentum)
