"""Centred cross-modal knowledge distillation (paper eq. 10-11) and collapse monitors (paper B.5); docs/method.md §4.7, §4.9."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class TeacherCentre(nn.Module):
    """Running centre c of one teacher's outputs: c <- m c + (1 - m) mean_batch(f_t).

    The batch mean is all-reduced over ranks, so every rank holds the same centre.
    """

    def __init__(self, dim: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("value", torch.zeros(1, dim))

    @torch.no_grad()
    def update(self, teacher_output: torch.Tensor) -> None:
        batch_sum = teacher_output.float().sum(dim=0, keepdim=True)
        count = torch.tensor([float(teacher_output.shape[0])], device=batch_sum.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        self.value.mul_(self.momentum).add_(batch_sum / count, alpha=1.0 - self.momentum)


def teacher_probabilities(teacher_output: torch.Tensor, centre: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 10 with centring: softmax((f_t - c) / tau_t) over the K output dimensions."""
    return F.softmax((teacher_output.float() - centre) / temperature, dim=-1)


def _expand_to_views(teacher_probs: torch.Tensor, num_student_rows: int) -> torch.Tensor:
    """Repeat (B, K) teacher targets for the student's (V*B, K) rows ordered view-major."""
    views, remainder = divmod(num_student_rows, teacher_probs.shape[0])
    if remainder:
        raise ValueError(f"student rows {num_student_rows} are not a multiple of teacher rows {teacher_probs.shape[0]}")
    return teacher_probs.repeat(views, 1)


def distillation_cross_entropy(teacher_probs: torch.Tensor, student_output: torch.Tensor, student_temperature: float) -> torch.Tensor:
    """H(P_t, P_s) = -sum_k P_t log P_s, averaged over the student's views and the batch."""
    targets = _expand_to_views(teacher_probs, student_output.shape[0])
    log_probs = F.log_softmax(student_output.float() / student_temperature, dim=-1)
    return -(targets * log_probs).sum(dim=-1).mean()


def cross_modal_distillation(
    video_teacher_probs: torch.Tensor,
    audio_teacher_probs: torch.Tensor,
    video_student_output: torch.Tensor,
    audio_student_output: torch.Tensor,
    student_temperature: float,
) -> dict[str, torch.Tensor]:
    """Eq. 11: the audio student learns the video teacher's distribution and vice versa.

    Returns ``kd_video_to_audio`` = H(P(f_t^v), P(f_s^a)), ``kd_audio_to_video`` and their sum ``kd``.
    """
    video_to_audio = distillation_cross_entropy(video_teacher_probs, audio_student_output, student_temperature)
    audio_to_video = distillation_cross_entropy(audio_teacher_probs, video_student_output, student_temperature)
    return {
        "kd_video_to_audio": video_to_audio,
        "kd_audio_to_video": audio_to_video,
        "kd": video_to_audio + audio_to_video,
    }


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k p log p."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1).mean()


def output_spread(probs: torch.Tensor) -> torch.Tensor:
    """H(mean_i p_i) - mean_i H(p_i), in nats: how much a row's distribution says about which row it
    is (the mutual information between row and output dimension, rows equally likely). 0 when every
    row has the same distribution, the collapse that output cosines near 1 only hint at; at most
    log(rows)."""
    mean = probs.float().mean(dim=0, keepdim=True)
    return entropy(mean) - entropy(probs.float())


@torch.no_grad()
def spread_monitors(
    video_teacher_probs: torch.Tensor,
    audio_teacher_probs: torch.Tensor,
    video_student_output: torch.Tensor,
    audio_student_output: torch.Tensor,
    student_temperature: float,
) -> dict[str, torch.Tensor]:
    """:func:`output_spread` of the teachers' targets and of the students' distributions
    softmax(f_s / tau_s) over this rank's micro-batch (students: every view's row)."""
    return {
        "teacher_spread_video": output_spread(video_teacher_probs),
        "teacher_spread_audio": output_spread(audio_teacher_probs),
        "student_spread_video": output_spread(F.softmax(video_student_output.float() / student_temperature, dim=-1)),
        "student_spread_audio": output_spread(F.softmax(audio_student_output.float() / student_temperature, dim=-1)),
    }


@torch.no_grad()
def distillation_monitors(
    video_teacher_probs: torch.Tensor,
    audio_teacher_probs: torch.Tensor,
    kd_terms: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Collapse monitors (paper B.5), logged and never optimised.

    KL(teacher || student) = H(P_t, P_s) - H(P_t) per direction, and the teacher entropies.
    A KL or KD term near 0 signals collapse.
    """
    video_entropy = entropy(video_teacher_probs)
    audio_entropy = entropy(audio_teacher_probs)
    return {
        "teacher_entropy_video": video_entropy,
        "teacher_entropy_audio": audio_entropy,
        "kl_video_to_audio": kd_terms["kd_video_to_audio"].detach() - video_entropy,
        "kl_audio_to_video": kd_terms["kd_audio_to_video"].detach() - audio_entropy,
    }
