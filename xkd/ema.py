"""EMA teacher update (paper eq. 13; docs/method.md §5.2): theta_t <- m theta_t + (1 - m) theta_s."""
from __future__ import annotations

import torch
from torch import nn


def teacher_student_pairs(teacher: nn.Module, student: nn.Module) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """Pair each teacher parameter with the student parameter of the same name.

    A teacher parameter shared between modalities (MATS blocks) appears once, so it gets
    one update per step from the shared student blocks. (The reference code applies two
    EMA updates per step to MATS's shared teacher blocks; we do one, as the paper's eq. 13.)
    """
    pairs, seen = [], set()
    for name, teacher_param in teacher.named_parameters(remove_duplicate=False):
        if id(teacher_param) in seen:
            continue
        seen.add(id(teacher_param))
        pairs.append((teacher_param, student.get_parameter(name)))
    return pairs


@torch.no_grad()
def ema_update_(pairs: list[tuple[nn.Parameter, nn.Parameter]], momentum: float) -> None:
    """In-place eq. 13 for every pair, as one fused foreach lerp: t += (1 - m) (s - t)."""
    if not pairs:
        return
    teachers = [t for t, _ in pairs]
    students = [s.detach().to(t.dtype) for t, s in pairs]
    torch._foreach_lerp_(teachers, students, 1.0 - momentum)
