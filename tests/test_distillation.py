"""Centred cross-modal KD (eq. 10-11), the teacher centre and the collapse monitors."""
import math

import pytest
import torch

from xkd.losses.distillation import (
    TeacherCentre,
    cross_modal_distillation,
    distillation_cross_entropy,
    distillation_monitors,
    output_spread,
    spread_monitors,
    entropy,
    teacher_probabilities,
)
from xkd.models import XKD
from xkd.models.xkd import flatten_views


@pytest.mark.parametrize("k", [3, 128, 8192])
def test_uniform_teacher_and_student_give_log_k(k):
    teacher = teacher_probabilities(torch.full((4, k), 0.7), torch.zeros(1, k), 0.04)
    assert torch.allclose(teacher, torch.full((4, k), 1.0 / k))
    student = torch.zeros(8, k)  # two views of four clips
    terms = cross_modal_distillation(teacher, teacher, student, student, 0.1)
    assert terms["kd_video_to_audio"].item() == pytest.approx(math.log(k), rel=1e-6)
    assert terms["kd_audio_to_video"].item() == pytest.approx(math.log(k), rel=1e-6)
    assert terms["kd"].item() == pytest.approx(2 * math.log(k), rel=1e-6)


def test_hand_computed_cross_entropy_k3():
    teacher = torch.tensor([[0.2, 0.3, 0.5]])
    student = torch.tensor([[1.0, 2.0, 3.0]])
    # tau_s = 1: log-softmax = s - log(e + e^2 + e^3) = s - 3.4076059644
    # CE = 3.4076059644 - (0.2*1 + 0.3*2 + 0.5*3) = 1.1076059644
    assert distillation_cross_entropy(teacher, student, 1.0).item() == pytest.approx(1.1076059644, rel=1e-6)
    # tau_s = 0.5: logits [2, 4, 6]; CE = log(e^2 + e^4 + e^6) - (0.4 + 1.2 + 3.0) = 1.5429316285
    assert distillation_cross_entropy(teacher, student, 0.5).item() == pytest.approx(1.5429316285, rel=1e-6)


def test_directions_pair_video_teacher_with_audio_student():
    video_teacher = torch.tensor([[1.0, 0.0, 0.0]])
    audio_teacher = torch.tensor([[0.0, 0.0, 1.0]])
    video_student = torch.tensor([[0.0, 0.0, 5.0]])  # agrees with the audio teacher
    audio_student = torch.tensor([[5.0, 0.0, 0.0]])  # agrees with the video teacher
    terms = cross_modal_distillation(video_teacher, audio_teacher, video_student, audio_student, 1.0)
    small = math.log(1 + 2 * math.exp(-5))  # -log softmax of the matching logit
    assert terms["kd_video_to_audio"].item() == pytest.approx(small, rel=1e-5)
    assert terms["kd_audio_to_video"].item() == pytest.approx(small, rel=1e-5)
    swapped = cross_modal_distillation(video_teacher, audio_teacher, audio_student, video_student, 1.0)
    assert swapped["kd"].item() == pytest.approx(2 * (5 + small), rel=1e-5)


def test_view_repetition_averages_over_views_and_batch():
    g = torch.Generator().manual_seed(0)
    batch, views, k, tau = 2, 3, 4, 0.1
    teacher = torch.softmax(torch.randn(batch, k, generator=g) * 3, dim=-1)
    student = torch.randn(views * batch, k, generator=g)  # rows: global b0 b1, local-1 b0 b1, local-2 b0 b1
    total = 0.0
    for row in range(views * batch):
        logits = [v / tau for v in student[row].tolist()]
        lse = math.log(sum(math.exp(v) for v in logits))
        clip = row % batch  # view-major: row r belongs to clip r mod B
        total += -sum(p * (logit - lse) for p, logit in zip(teacher[clip].tolist(), logits))
    expected = total / (views * batch)
    assert distillation_cross_entropy(teacher, student, tau).item() == pytest.approx(expected, rel=1e-5)
    # the clip-major pairing (row r -> clip r // views) is a different number: the pairing matters
    wrong = teacher.repeat_interleave(views, dim=0)
    wrong_value = -(wrong * torch.log_softmax(student / tau, -1)).sum(-1).mean().item()
    assert wrong_value != pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="multiple"):
        distillation_cross_entropy(teacher, student[:5], tau)


def test_local_views_flatten_view_major_like_the_teacher_repetition():
    batch, views = 3, 2
    local = torch.arange(batch * views * 4, dtype=torch.float32).reshape(batch, views, 1, 2, 2)  # (B, n, ...)
    flat = flatten_views(local)
    assert flat.shape == (views * batch, 1, 2, 2)
    for row in range(views * batch):
        # row r is view r // B of clip r mod B, the clip whose teacher target the repetition puts there
        assert torch.equal(flat[row], local[row % batch, row // batch])
    teacher = torch.eye(batch)
    repeated_clip = [int(r.argmax()) for r in teacher.repeat(views, 1)]
    assert repeated_clip == [row % batch for row in range(views * batch)]


def test_teacher_centre_update_hand_numbers():
    centre = TeacherCentre(2, momentum=0.9)
    assert centre.value.tolist() == [[0.0, 0.0]]
    centre.update(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    # batch mean [2, 3]: c = 0.9 * 0 + 0.1 * [2, 3] = [0.2, 0.3]
    assert centre.value[0].tolist() == pytest.approx([0.2, 0.3], rel=1e-6)
    centre.update(torch.tensor([[0.0, 0.0], [10.0, -10.0]]))
    # batch mean [5, -5]: c = 0.9 * [0.2, 0.3] + 0.1 * [5, -5] = [0.68, -0.23]
    assert centre.value[0].tolist() == pytest.approx([0.68, -0.23], rel=1e-6)
    assert "value" in dict(centre.named_buffers())  # saved with the checkpoint, not a parameter
    assert list(centre.parameters()) == []


def test_teacher_probabilities_centre_and_temperature():
    out = teacher_probabilities(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.5, 0.5, 1.0]]), 0.5)
    # (f - c) / tau = [1, 3, 4]; softmax = [e, e^3, e^4] / (e + e^3 + e^4)
    assert out[0].tolist() == pytest.approx([0.0351190270, 0.2594964603, 0.7053845127], rel=1e-6)
    # without the centre it would be softmax([2, 4, 6]), a different distribution
    plain = teacher_probabilities(torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 3), 0.5)
    assert plain[0, 0].item() == pytest.approx(math.exp(2) / (math.exp(2) + math.exp(4) + math.exp(6)), rel=1e-6)
    assert out.sum().item() == pytest.approx(1.0)


def test_entropy_hand_computed():
    probs = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    # -(0.2 ln 0.2 + 0.3 ln 0.3 + 0.5 ln 0.5) = 1.0296530141; one-hot: 0; batch mean: 0.5148265070
    assert entropy(probs).item() == pytest.approx(0.5148265070, rel=1e-6)


def test_output_spread_hand_computed():
    # two rows, one-hot on different dimensions: mean [0.5, 0.5], entropy ln 2; rows 0 -> spread ln 2
    assert output_spread(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).item() == pytest.approx(math.log(2), rel=1e-6)
    # every row the same distribution (collapse), however peaked: spread 0
    assert output_spread(torch.tensor([[0.2, 0.3, 0.5]] * 4)).item() == pytest.approx(0.0, abs=1e-7)
    # [0.2, 0.3, 0.5] and one-hot [1, 0, 0]: mean [0.6, 0.15, 0.25]
    # H(mean) = -(0.6 ln 0.6 + 0.15 ln 0.15 + 0.25 ln 0.25) = 0.9376369623; mean H = 0.5148265070
    probs = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    assert output_spread(probs).item() == pytest.approx(0.9376369623 - 0.5148265070, rel=1e-6)


def test_spread_monitors_students_at_their_temperature():
    tau = 0.1
    teacher = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    # students whose rows differ only by a per-row constant: same softmax for every row, spread 0,
    # although the raw outputs are far apart
    collapsed = torch.tensor([[1.0, 2.0, 3.0], [11.0, 12.0, 13.0]])
    # a student that outputs two distinct one-hot-like rows at tau = 0.1: spread close to ln 2
    distinct = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    out = spread_monitors(teacher, teacher, collapsed, distinct, tau)
    assert out["teacher_spread_video"].item() == pytest.approx(0.9376369623 - 0.5148265070, rel=1e-6)
    assert out["student_spread_video"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["student_spread_audio"].item() == pytest.approx(math.log(2), abs=1e-6)


def test_monitors_kl_is_ce_minus_teacher_entropy():
    tau = 0.1
    video_teacher = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    audio_teacher = torch.tensor([[0.1, 0.1, 0.8], [0.25, 0.5, 0.25]])
    # student logits whose softmax(s / tau) equals the other modality's teacher, for 2 views (4 rows)
    audio_student = (tau * video_teacher.log() + 3.0).repeat(2, 1)  # + constant: softmax unchanged
    video_student = torch.randn(4, 3)
    terms = cross_modal_distillation(video_teacher, audio_teacher, video_student, audio_student, tau)
    monitors = distillation_monitors(video_teacher, audio_teacher, terms)
    assert monitors["teacher_entropy_video"].item() == pytest.approx((1.0296530141 + 0.8979457248) / 2, rel=1e-6)
    assert monitors["kl_video_to_audio"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["kd_video_to_audio"].item() == pytest.approx(monitors["teacher_entropy_video"].item(), rel=1e-5)
    # the other direction: naive KL(teacher || student) averaged over the 4 rows
    q = torch.softmax(video_student / tau, dim=-1)
    kl = 0.0
    for row in range(4):
        p = audio_teacher[row % 2]
        kl += sum(p[i].item() * math.log(p[i].item() / q[row, i].item()) for i in range(3))
    assert monitors["kl_audio_to_video"].item() == pytest.approx(kl / 4, rel=1e-5)
    assert monitors["kl_audio_to_video"].item() > 0
    for value in monitors.values():
        assert value.grad_fn is None


def test_model_teacher_uses_old_centre_then_updates(tiny_config, random_batch):
    config = tiny_config()
    model = XKD(config)
    batch = random_batch(config, 3)
    tau = 10.0  # soft, so that log p is exact enough to recover the teacher outputs
    teacher = model.teacher
    targets = teacher(batch["video_global"], batch["audio_global"], tau, tau)
    # before the update the centre was 0, so P = softmax(f_t / tau); the head ends in a non-affine
    # LayerNorm, so every row of f_t has mean 0 and f_t = tau log P - mean(tau log P)
    logits = tau * targets.video_probs.log()
    f_t = logits - logits.mean(dim=-1, keepdim=True)
    assert teacher.video_centre.value[0].tolist() == pytest.approx((0.1 * f_t.mean(dim=0)).tolist(), abs=1e-4)
    assert teacher.video_centre.value.abs().sum() > 0
    # same batch again without updating: probabilities now use the new centre
    centre = teacher.video_centre.value.clone()
    again = teacher(batch["video_global"], batch["audio_global"], tau, tau, update_centres=False)
    assert torch.allclose(again.video_probs, torch.softmax((f_t - centre) / tau, dim=-1), atol=1e-6)
    assert torch.equal(teacher.video_centre.value, centre)
