"""EMA teacher update (eq. 13) and the per-step schedules (docs/method.md §5)."""
import math

import pytest
import torch
from torch import nn

from xkd.ema import ema_update_, teacher_student_pairs
from xkd.models import XKD
from xkd.schedules import ema_momentum, epochs_to_steps, learning_rate, teacher_temperature


def test_ema_update_hand_numbers():
    teacher = nn.Parameter(torch.tensor([1.0, 2.0]), requires_grad=False)
    student = nn.Parameter(torch.tensor([3.0, -2.0]))
    ema_update_([(teacher, student)], 0.9)
    # 0.9 * [1, 2] + 0.1 * [3, -2] = [0.9 + 0.3, 1.8 - 0.2] = [1.2, 1.6]
    assert teacher.tolist() == pytest.approx([1.2, 1.6], rel=1e-6)
    ema_update_([(teacher, student)], 0.5)
    # 0.5 * [1.2, 1.6] + 0.5 * [3, -2] = [2.1, -0.2]
    assert teacher.tolist() == pytest.approx([2.1, -0.2], rel=1e-6)
    assert student.tolist() == [3.0, -2.0]  # the student is untouched
    ema_update_([(teacher, student)], 1.0)  # momentum 1: frozen
    assert teacher.tolist() == pytest.approx([2.1, -0.2], rel=1e-6)
    ema_update_([], 0.9)  # nothing to do, no error


def test_teacher_starts_as_student_copy_and_follows_by_ema(tiny_config):
    model = XKD(tiny_config())
    pairs = teacher_student_pairs(model.teacher, model.student)
    teacher_names = [name for name, _ in model.teacher.named_parameters()]
    assert len(pairs) == len(teacher_names) > 0
    student_ids = {id(p) for p in model.student.parameters()}
    for teacher_param, student_param in pairs:
        assert id(student_param) in student_ids and teacher_param is not student_param
        assert teacher_param.shape == student_param.shape
        assert torch.equal(teacher_param, student_param)  # initialised as a copy
    # decoders have no teacher
    assert not any(name.startswith(("video_decoder", "audio_decoder")) for name in teacher_names)
    old = [t.detach().clone() for t, _ in pairs]
    with torch.no_grad():
        for _, student_param in pairs:
            student_param.add_(1.0)
    ema_update_(pairs, 0.9)
    for (teacher_param, _), before in zip(pairs, old):
        # 0.9 t + 0.1 (t + 1) = t + 0.1
        assert torch.allclose(teacher_param, before + 0.1, atol=1e-6)


def test_learning_rate_warmup_and_cosine():
    kw = dict(peak=1.0, warmup_steps=10, total_steps=110, final=0.1)
    assert learning_rate(0, **kw) == 0.0
    assert learning_rate(1, **kw) == pytest.approx(0.1)
    assert learning_rate(5, **kw) == pytest.approx(0.5)
    assert learning_rate(9, **kw) == pytest.approx(0.9)
    assert learning_rate(10, **kw) == pytest.approx(1.0)  # peak exactly at the end of warm-up
    # cosine: a quarter of the way, 0.1 + 0.9 * 0.5 * (1 + cos(pi / 4)) = 0.8681980515
    assert learning_rate(35, **kw) == pytest.approx(0.8681980515)
    assert learning_rate(60, **kw) == pytest.approx(0.55)  # midpoint 0.5 * (peak + final)
    assert learning_rate(110, **kw) == pytest.approx(0.1)
    assert learning_rate(500, **kw) == pytest.approx(0.1)  # stays at final
    values = [learning_rate(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay after warm-up
    # no warm-up: starts at the peak
    assert learning_rate(0, peak=2.0, warmup_steps=0, total_steps=100) == pytest.approx(2.0)
    assert learning_rate(50, peak=2.0, warmup_steps=0, total_steps=100) == pytest.approx(1.0)


def test_ema_momentum_cosine_from_0997_to_1():
    kw = dict(start=0.997, end=1.0, total_steps=1000)
    assert ema_momentum(0, **kw) == pytest.approx(0.997, abs=1e-12)
    assert ema_momentum(500, **kw) == pytest.approx(0.9985, abs=1e-12)
    # a quarter: 1 - 0.003 * 0.5 * (1 + cos(pi / 4)) = 0.9974393398
    assert ema_momentum(250, **kw) == pytest.approx(0.9974393398, abs=1e-10)
    assert ema_momentum(1000, **kw) == pytest.approx(1.0, abs=1e-12)
    assert ema_momentum(5000, **kw) == pytest.approx(1.0, abs=1e-12)


def test_teacher_temperature_linear_warmup_then_constant():
    kw = dict(start=0.04, end=0.06, warmup_steps=30)
    assert teacher_temperature(0, **kw) == pytest.approx(0.04)
    assert teacher_temperature(6, **kw) == pytest.approx(0.044)
    assert teacher_temperature(15, **kw) == pytest.approx(0.05)
    assert teacher_temperature(30, **kw) == pytest.approx(0.06)
    assert teacher_temperature(1000, **kw) == pytest.approx(0.06)
    # XKD (MS): constant, no warm-up
    assert teacher_temperature(0, start=0.07, end=0.07, warmup_steps=0) == pytest.approx(0.07)
    assert teacher_temperature(0, start=0.09, end=0.11, warmup_steps=0) == pytest.approx(0.11)


def test_epochs_to_steps():
    assert epochs_to_steps(30, 100) == 3000
    assert epochs_to_steps(0.5, 7) == 4  # round(3.5) -> 4
    assert epochs_to_steps(1.25, 8) == 10
    assert math.isclose(learning_rate(epochs_to_steps(30, 10), peak=1.0, warmup_steps=300, total_steps=8000), 1.0)


def test_evaluation_uses_the_pretraining_schedule():
    """FC-tuning and fine-tuning take their lr from xkd.schedules.learning_rate: warm-up from 0 at
    step 0, then cosine (to min_lr for fine-tuning) or fixed. Hand values: peak 1.0, warm-up 4 of 12
    steps: step 2 -> 0.5; step 8 -> halfway through the cosine -> 0.5 (+ min_lr/2 for fine-tuning)."""
    import pytest as _pytest

    from xkd.evaluation.fc import FCConfig
    from xkd.evaluation.fc import lr_at as fc_lr
    from xkd.evaluation.finetune import FinetuneConfig
    from xkd.evaluation.finetune import lr_at as finetune_lr

    fc = FCConfig(lr=1.0, schedule="cosine")
    assert [fc_lr(s, 12, 4, fc) for s in (0, 2, 4, 8, 12)] == _pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    assert [fc_lr(s, 12, 4, FCConfig(lr=1.0, schedule="fixed")) for s in (2, 8, 12)] == _pytest.approx([0.5, 1, 1])
    ft = FinetuneConfig(lr=1.0, min_lr=0.1)
    assert [finetune_lr(s, 12, 4, ft) for s in (0, 2, 8, 12)] == _pytest.approx([0.0, 0.5, 0.55, 0.1])
