"""Final objective (eq. 12) and how the model's logged components add up."""
import pytest
import torch

from xkd.config import LossConfig
from xkd.losses.total import total_loss
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


@pytest.mark.parametrize("average", [False, True])
def test_model_output_components_add_up(tiny_config, random_batch, average):
    config = tiny_config(loss={"recon_average_modalities": average})
    model = XKD(config)
    torch.manual_seed(0)
    out = model(random_batch(config, 2), 0.1, 0.07)
    ae = out["recon_video"] + out["recon_audio"]
    if average:
        ae = ae / 2
    assert out["ae"].item() == pytest.approx(ae.item(), rel=1e-6)
    assert out["da"].item() == pytest.approx((out["mmd_student"] + out["mmd_teacher"]).item(), rel=1e-6)
    assert out["kd"].item() == pytest.approx((out["kd_video_to_audio"] + out["kd_audio_to_video"]).item(), rel=1e-6)
    expected = (5 * out["ae"].item() + out["da"].item() + out["kd"].item()) / 7
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
