"""The student's optimizer (docs/method.md §5.1): AdamW with weight decay on weights only."""
from __future__ import annotations

import torch
from torch import nn

from xkd.config import OptimConfig


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight matrices decayed; biases and 1-D parameters (norms) not.

    As docs/method.md §5.1 (and the reference code's groups): anything with ndim <= 1 or named ``*.bias`` gets no decay.
    Shared parameters (MAS/MATS blocks) appear once.
    """
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def student_optimizer(student: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`decay_groups`; the learning rate is set every step by the schedule.

    ``fused=True`` (CPU and CUDA): ZeRO hands the optimizer one flat fp32 partition per group,
    and the default for-loop AdamW allocates temporaries of that whole size at every step
    (on the CPU, 1.6 s of a ViT-B step against 0.13 s fused; BENCHMARKS.md).
    """
    return torch.optim.AdamW(decay_groups(student, optim.weight_decay), lr=0.0, betas=tuple(optim.betas),
                             eps=optim.eps, fused=True)
