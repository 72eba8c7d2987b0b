"""Multi-kernel RBF MMD (paper eq. 7-9; docs/method.md §4.6): biased MMD^2 with k(a, b) = sum_g exp(-g ||a - b||^2 / s)."""
import math

import pytest
import torch

from xkd.losses.mmd import DEFAULT_GAMMAS, mmd_rbf


def test_default_gammas_are_the_paper_set():
    assert tuple(DEFAULT_GAMMAS) == (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def test_identical_sets_give_exactly_zero():
    torch.manual_seed(0)
    x = torch.randn(6, 16)
    assert mmd_rbf(x, x.clone()).item() == 0.0
    assert mmd_rbf(x, x.clone(), [0.5]).item() == 0.0


def test_shifted_sets_are_positive():
    torch.manual_seed(1)
    x = torch.randn(8, 4)
    small = mmd_rbf(x, x + 0.1, [1.0]).item()
    large = mmd_rbf(x, x + 1.0, [1.0]).item()
    assert small > 0 and large > small


def test_hand_computed_one_dimension():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[2.0]])
    # k(a, b) = exp(-(a - b)^2), gamma = 1
    # mean k(x, x') = (1 + e^-1 + e^-1 + 1) / 4 = 0.5 + 0.5 e^-1
    # mean k(y, y') = 1
    # mean k(x, y)  = (e^-4 + e^-1) / 2
    # MMD^2 = 0.5 + 0.5 e^-1 + 1 - (e^-4 + e^-1) = 1.5 - 0.5 e^-1 - e^-4 = 1.2977446405
    assert mmd_rbf(x, y, [1.0]).item() == pytest.approx(1.2977446405, rel=1e-6)
    assert mmd_rbf(y, x, [1.0]).item() == pytest.approx(1.2977446405, rel=1e-6)  # symmetric


def test_hand_computed_two_dimensions_and_kernel_sum():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    # gamma 0.5: within-set squared distances 0, 1 -> mean k = 0.5 + 0.5 e^-0.5 for both sets;
    # cross distances 1, 2, 2, 1 -> mean k(x, y) = 0.5 e^-0.5 + 0.5 e^-1
    # MMD^2 = 2 (0.5 + 0.5 e^-0.5) - 2 (0.5 e^-0.5 + 0.5 e^-1) = 1 - e^-1 = 0.6321205588
    assert mmd_rbf(x, y, [0.5]).item() == pytest.approx(0.6321205588, rel=1e-6)
    # gamma 2 alone gives 1 - e^-4; the kernel is a sum, so both give 2 - e^-1 - e^-4 = 1.6138049199
    assert mmd_rbf(x, y, [2.0]).item() == pytest.approx(1 - math.exp(-4), rel=1e-6)
    assert mmd_rbf(x, y, [0.5, 2.0]).item() == pytest.approx(1.6138049199, rel=1e-6)


def test_naive_loop_with_default_gammas_and_unequal_sizes():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, generator=g) * 0.3
    y = torch.randn(4, 5, generator=g) * 0.3 + 0.2

    def k(a, b):
        d2 = sum((a[i].item() - b[i].item()) ** 2 for i in range(a.shape[0]))
        return sum(math.exp(-gamma * d2) for gamma in DEFAULT_GAMMAS)

    xx = sum(k(a, b) for a in x for b in x) / 9
    yy = sum(k(a, b) for a in y for b in y) / 16
    xy = sum(k(a, b) for a in x for b in y) / 12
    assert mmd_rbf(x, y).item() == pytest.approx(xx + yy - 2 * xy, rel=1e-5)


def test_non_negative_on_high_dimensional_head_outputs():
    # 128-d LayerNorm-ed vectors (like the head outputs): the biased estimate is a squared norm, >= 0,
    # also when the two sets are nearly identical and the large gammas see only the diagonal.
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.layer_norm(torch.randn(8, 128, generator=g), (128,))
    y = torch.nn.functional.layer_norm(x + 1e-3 * torch.randn(8, 128, generator=g), (128,))
    value = mmd_rbf(x, y).item()
    assert value >= 0.0
    assert math.isfinite(value)


def test_gradients_finite_with_duplicate_points():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    y = torch.tensor([[1.0, 2.0], [3.0, 1.0]], requires_grad=True)  # y[0] duplicates x[0], x[1]
    loss = mmd_rbf(x, y, [0.1, 1.0, 10.0])
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(torch.isfinite(x.grad)) and torch.all(torch.isfinite(y.grad))
    assert x.grad.abs().sum() > 0  # gradients still flow from the distinct points
    # identical sets: zero loss, zero (finite) gradient
    z = torch.randn(4, 3).repeat(2, 1).requires_grad_(True)
    value = mmd_rbf(z, z.detach().clone())
    value.backward()
    assert value.item() == 0.0 and torch.all(torch.isfinite(z.grad))


def test_distance_scale_dim_hand_computed():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    # D = 2, gamma 0.5: scaled squared distances within sets 0, 0.5; across 0.5, 1, 1, 0.5
    # MMD^2 = 2 (0.5 + 0.5 e^-0.25) - 2 (0.5 e^-0.25 + 0.5 e^-0.5) = 1 - e^-0.5 = 0.3934693403
    assert mmd_rbf(x, y, [0.5], distance_scale="dim").item() == pytest.approx(0.3934693403, rel=1e-6)
    assert mmd_rbf(x, y, [0.5], distance_scale="none").item() == pytest.approx(1 - math.exp(-1), rel=1e-6)


def test_distance_scale_dim_equals_mmd_of_inputs_over_sqrt_dim():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 64, generator=g)
    y = torch.randn(3, 64, generator=g) + 0.3
    scaled = mmd_rbf(x, y, DEFAULT_GAMMAS, distance_scale="dim")
    assert scaled.item() == pytest.approx(mmd_rbf(x / 8.0, y / 8.0, DEFAULT_GAMMAS).item(), rel=1e-5)
    assert scaled.item() > 1e-3  # not the trivially zero MMD of 64-d noise at gamma >= 1e-3
    assert mmd_rbf(x, y, DEFAULT_GAMMAS).item() != pytest.approx(scaled.item(), rel=1e-2)
    with pytest.raises(ValueError, match="distance scale"):
        mmd_rbf(x, y, distance_scale="sqrt")


def test_head_output_monitors_hand_computed():
    from xkd.losses.mmd import head_output_monitors

    video = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    audio = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    monitors = head_output_monitors(video, audio)
    # video cosines: (1,0)-(0,1) 0, (1,0)-(1,1) and (0,1)-(1,1) 1/sqrt(2): mean sqrt(2) / 3
    assert monitors["head_cosine_video"].item() == pytest.approx(math.sqrt(2) / 3, rel=1e-6)
    assert monitors["head_cosine_audio"].item() == pytest.approx(1.0, rel=1e-6)
    # cross squared distances to (2, 0): 1, 5, 2 (twice each) -> mean 8 / 3
    assert monitors["head_sqdist_cross"].item() == pytest.approx(8 / 3, rel=1e-6)
    # as the kernel sees it with distance_scale="dim": divided by D = 2
    assert head_output_monitors(video, audio, "dim")["head_sqdist_cross"].item() == pytest.approx(4 / 3, rel=1e-6)
    opposite = head_output_monitors(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), audio)
    assert opposite["head_cosine_video"].item() == pytest.approx(-1.0, rel=1e-6)


def test_model_reports_head_monitors(tiny_config, random_batch):
    """The student's output dict (every key of which the trainer logs) carries the new monitors."""
    from xkd.distributed import mean_over_ranks
    from xkd.models import XKD

    config = tiny_config(loss={"mmd_distance_scale": "dim"})
    torch.manual_seed(0)
    out = XKD(config)(random_batch(config, 2), 0.1, 0.07)
    record = mean_over_ranks(out)
    for key in ("head_cosine_video", "head_cosine_audio", "head_sqdist_cross"):
        assert key in record and math.isfinite(record[key]), key
        assert not out[key].requires_grad
    assert -1.0 <= record["head_cosine_video"] <= 1.0 and -1.0 <= record["head_cosine_audio"] <= 1.0
    # LayerNorm-ed outputs: ||f||^2 ~= D, so the D-scaled cross distance lies in [0, 4]
    assert 0.0 < record["head_sqdist_cross"] <= 4.0
    # the spreads: nats in [0, log(rows)]; 2 samples x (1 global + 2 local) student rows, 2 teacher rows
    for key in ("student_spread_video", "student_spread_audio"):
        assert 0.0 <= record[key] <= math.log(6) + 1e-6, key
    for key in ("teacher_spread_video", "teacher_spread_audio"):
        assert 0.0 <= record[key] <= math.log(2) + 1e-6, key
