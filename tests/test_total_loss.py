"""Final objective (paper eq. 12; docs/method.md §4.8), the pair reduction switch, and how the model's logged
components add up."""
import pytest
import torch

from xkd.config import LossConfig
from xkd.losses.total import reduce_pair, total_loss
from xkd.models import XKD


def test_eq12_default_weights_hand_numbers():
    loss = total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), LossConfig())
    # (5 * 1 + 1 * 2 + 1 * 3) / 7 = 10 / 7
    assert loss.item() == pytest.approx(1.4285714286, rel=1e-6)
    loss = total_loss(torch.tensor(0.4), torch.tensor(0.0), torch.tensor(7.0), LossConfig())
    # (2 + 0 + 7) / 7 = 9 / 7
    assert loss.item() == pytest.approx(1.2857142857, rel=1e-6)


def test_eq12_custom_weights():
    config = LossConfig(ae_weight=2.0, da_weight=0.0, kd_weight=2.0)
    # (2 * 3 + 0 * 100 + 2 * 1) / 4 = 2
    assert total_loss(torch.tensor(3.0), torch.tensor(100.0), torch.tensor(1.0), config).item() == pytest.approx(2.0)


def test_pair_reduction_hand_example_matches_reference_weighting():
    # recon v/a = 1, 3; MMD student/teacher = 0.5, 0.25; KD v->a / a->v = 2, 4
    terms = {"ae": (1.0, 3.0), "da": (0.5, 0.25), "kd": (2.0, 4.0)}

    def loss(reduction):
        reduced = {k: reduce_pair(torch.tensor(a), torch.tensor(b), reduction) for k, (a, b) in terms.items()}
        return total_loss(reduced["ae"], reduced["da"], reduced["kd"], LossConfig(pair_reduction=reduction)).item()

    # paper (sum): (5 * 4 + 1 * 0.75 + 1 * 6) / 7 = 26.75 / 7
    assert loss("sum") == pytest.approx(3.8214285714, rel=1e-6)
    # reference code: recon (1+3)/2 = 2, align (0.5+0.25)/2 = 0.375, cmkd (2+4)/2 = 3,
    # loss = (0.375 * 1 + 3 * 1 + 2 * 5) / (1 + 1 + 5) = 13.375 / 7
    assert loss("mean") == pytest.approx(1.9107142857, rel=1e-6)
    # the removed recon_average_modalities halved L_ae only: (5 * 2 + 0.75 + 6) / 7 = 16.75 / 7, not the reference
    assert loss("mean") != pytest.approx(2.3928571429, rel=1e-3)
    with pytest.raises(ValueError, match="pair reduction"):
        reduce_pair(torch.tensor(1.0), torch.tensor(2.0), "max")


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_model_output_components_add_up(tiny_config, random_batch, reduction):
    config = tiny_config(loss={"pair_reduction": reduction})
    model = XKD(config)
    torch.manual_seed(0)
    out = model(random_batch(config, 2), 0.1, 0.07)
    half = 0.5 if reduction == "mean" else 1.0
    assert out["ae"].item() == pytest.approx(half * (out["recon_video"] + out["recon_audio"]).item(), rel=1e-6)
    assert out["da"].item() == pytest.approx(half * (out["mmd_student"] + out["mmd_teacher"]).item(), rel=1e-6)
    assert out["kd"].item() == pytest.approx(half * (out["kd_video_to_audio"] + out["kd_audio_to_video"]).item(),
                                             rel=1e-6)
    expected = (5 * out["ae"].item() + out["da"].item() + out["kd"].item()) / 7
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_mean_reduction_halves_the_whole_loss(tiny_config, random_batch):
    """Reference weighting = the paper's loss times 1/2 on the same step (same masks, same centres)."""
    losses = {}
    for reduction in ("sum", "mean"):
        config = tiny_config(loss={"pair_reduction": reduction})
        torch.manual_seed(0)
        model = XKD(config)
        torch.manual_seed(1)
        losses[reduction] = model(random_batch(config, 2), 0.1, 0.07, update_centres=False)
    assert losses["mean"]["loss"].item() == pytest.approx(losses["sum"]["loss"].item() / 2, rel=1e-6)
    assert losses["mean"]["recon_video"].item() == pytest.approx(losses["sum"]["recon_video"].item(), rel=1e-6)
