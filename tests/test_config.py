"""Config loading: shipped files validate; bad files fail naming the file, the key and what is expected."""
from pathlib import Path

import pytest

from xkd.config import ConfigError, load_config, scaled_lr

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["xkd_ms_k400", "xkd_mas_k400", "xkd_mats_k400", "xkd_ms_audioset_vitl", "tiny"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.name == name


def test_paper_values():
    ms = load_config(CONFIGS / "xkd_ms_k400.yaml")
    assert (ms.model.video_encoder, ms.model.audio_encoder, ms.model.variant) == ("base", "base", "ms")
    assert (ms.model.video_mask_ratio, ms.model.audio_mask_ratio) == (0.85, 0.80)
    assert ms.loss.video_teacher_temperature.start == 0.1 and ms.loss.audio_teacher_temperature.end == 0.07
    assert (ms.loss.ae_weight, ms.loss.da_weight, ms.loss.kd_weight) == (5.0, 1.0, 1.0)
    assert ms.optim.epochs == 800 and ms.optim.betas == [0.9, 0.95] and ms.optim.weight_decay == 0.3
    assert ms.views.audio_global_frames == 448 and ms.views.audio_local_frames == 112
    mas = load_config(CONFIGS / "xkd_mas_k400.yaml")
    temp = mas.loss.audio_teacher_temperature
    assert (temp.start, temp.end, temp.warmup_epochs) == (0.04, 0.06, 30.0)
    assert (ms.views.video_local_views, ms.views.audio_local_views) == (1, 1)
    assert (mas.views.video_local_views, mas.views.audio_local_views) == (3, 1)  # reference MAS config
    mats = load_config(CONFIGS / "xkd_mats_k400.yaml")
    assert mats.model.variant == "mats" and (mats.views.video_local_views, mats.views.audio_local_views) == (3, 1)
    # reference MATS config: constant teacher temperatures 0.1 / 0.07, like XKD
    for schedule, value in ((mats.loss.video_teacher_temperature, 0.1), (mats.loss.audio_teacher_temperature, 0.07)):
        assert (schedule.start, schedule.end, schedule.warmup_epochs) == (value, value, 0.0)
    vitl = load_config(CONFIGS / "xkd_ms_audioset_vitl.yaml")
    assert vitl.model.video_encoder == "large" and vitl.model.audio_encoder == "base" and vitl.optim.epochs == 400


def test_lr_scales_with_global_batch():
    config = load_config(CONFIGS / "xkd_ms_k400.yaml", ["train.global_batch_size=512", "train.micro_batch_size=64"])
    assert scaled_lr(config) == pytest.approx(2e-4)


def test_overrides_parse_yaml_values():
    config = load_config(CONFIGS / "tiny.yaml", ["optim.base_lr=2e-4", "model.variant=mats", "loss.mmd_gammas=[1, 2]",
                                                 "loss.pair_reduction=mean", "loss.mmd_distance_scale=dim"])
    assert config.optim.base_lr == 2e-4 and config.model.variant == "mats"
    assert config.loss.mmd_gammas == [1.0, 2.0]
    assert config.loss.pair_reduction == "mean" and config.loss.mmd_distance_scale == "dim"


def test_loss_switch_defaults_are_the_paper():
    loss = load_config(CONFIGS / "tiny.yaml").loss
    assert loss.pair_reduction == "sum" and loss.mmd_distance_scale == "none"


def test_removed_recon_average_modalities(tmp_path):
    # true (halved L_ae only) is refused with what replaces it
    with pytest.raises(ConfigError, match=r"recon_average_modalities was removed.*loss\.pair_reduction"):
        load_config(write(tmp_path, "loss:\n  recon_average_modalities: true\n"))
    # false (the paper's sum) still loads, so configs stored with older checkpoints and exports do
    config = load_config(write(tmp_path, "loss:\n  recon_average_modalities: false\n  ae_weight: 4\n"))
    assert config.loss.pair_reduction == "sum" and config.loss.ae_weight == 4.0
    assert not hasattr(config.loss, "recon_average_modalities")


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("model:\n  video_mask_ratio: 1.2\n", "model.video_mask_ratio", "strictly between 0 and 1"),
        ("model:\n  audio_mask_ratio: 0\n", "model.audio_mask_ratio", "strictly between 0 and 1"),
        ("views:\n  video_global_size: 100\n", "views.video_global_size", "multiple of model.video_patch (16)"),
        ("views:\n  video_local_frames: 6\n", "views.video_local_frames", "multiple of model.video_tubelet (4)"),
        ("views:\n  audio_global_seconds: 3.5\n", "views.audio_global_seconds", "multiple of model.audio_patch_time"),
        ("model:\n  variant: xyz\n", "model.variant", "one of ['ms', 'mas', 'mats']"),
        ("model:\n  teacher_view: both\n", "model.teacher_view", "one of ['global', 'local']"),
        ("model:\n  variant: mas\n  audio_encoder: tiny\n", "model.audio_encoder", "the same size as model.video_encoder"),
        ("model:\n  depth: 3\n", "'depth'", "expected one of"),
        ("optimizer:\n  lr: 1\n", "'optimizer'", "expected one of"),
        ("optim:\n  epochs: ten\n", "optim.epochs", "expected an integer"),
        ("optim:\n  base_lr: true\n", "optim.base_lr", "expected a number"),
        ("loss:\n  norm_pix_loss: 1\n", "loss.norm_pix_loss", "expected true or false"),
        ("train:\n  global_batch_size: 10\n  micro_batch_size: 4\n", "train.global_batch_size", "multiple of"),
        ("model: 3\n", "model", "expected a mapping"),
        ("loss:\n  pair_reduction: half\n", "loss.pair_reduction", "one of ['sum', 'mean']"),
        ("loss:\n  mmd_distance_scale: sqrt\n", "loss.mmd_distance_scale", "one of ['none', 'dim']"),
        ("data:\n  cpu_video_decoder: ffmpeg\n", "data.cpu_video_decoder", "one of ['pyav', 'dali']"),
    ],
)
def test_bad_values_name_file_key_and_expectation(tmp_path, text, key, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and key in message and expected in message


def test_bad_override_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.video_mask_ratio: expected a ratio"):
        load_config(CONFIGS / "tiny.yaml", ["model.video_mask_ratio=1.5"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(CONFIGS / "tiny.yaml", ["model.variant"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
