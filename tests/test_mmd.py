"""Multi-kernel RBF MMD (eq. 7-9): biased MMD^2 with k(a, b) = sum_g exp(-g ||a - b||^2)."""
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
