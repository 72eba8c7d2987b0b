"""The export format: the one module that writes, reads and identifies exported encoders.

An export directory holds ``{video,audio}_{student,teacher}_encoder.safetensors`` (plain fp32
state dicts of the four encoders) and ``config.yaml`` (the resolved training config). It is what
``eval/``, :func:`xkd.load_encoder` and fine-tuning read.

- :func:`export_encoders`: a training checkpoint -> an export. Student weights are consolidated
  from the ZeRO partitions with DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint`` (any
  stage, any world size); teacher weights come from ``xkd_state.pt``. Every checkpoint file is
  scanned and loaded weights-only (:mod:`xkd.engine.checkpoint_safety`).
- :func:`export_initial_encoders`: the step-0 (random init) encoders of an export's config.
- :func:`export_config`, :func:`encoder_sha256`, :func:`load_encoder`: reading one.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from xkd.atomic_files import atomic_write_bytes
from xkd.config import ConfigError, XKDConfig, config_from_dict
from xkd.data.shard_writer import file_sha256
from xkd.engine import checkpoint, checkpoint_safety
from xkd.models.xkd import build_encoders

ENCODER_NAMES = ("video_student_encoder", "audio_student_encoder", "video_teacher_encoder", "audio_teacher_encoder")
CONFIG_NAME = "config.yaml"
PRODUCER = "launch/export_encoders.py"


def encoder_path(export_dir: str | Path, name: str) -> Path:
    return Path(export_dir) / f"{name}.safetensors"


def _fp32(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v.detach().float().contiguous().clone() for k, v in state.items() if k.startswith(prefix)}


def write_export(output: Path, encoders: dict[str, dict[str, torch.Tensor]], config_yaml: str,
                 metadata: dict[str, str]) -> dict[str, Path]:
    """Write the four encoders' state dicts and the config; each file atomically."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ENCODER_NAMES:
        paths[name] = encoder_path(output, name)
        tmp = paths[name].with_name(paths[name].name + ".tmp")
        save_file(encoders[name], str(tmp), metadata=metadata)
        tmp.replace(paths[name])
    atomic_write_bytes(output / CONFIG_NAME, config_yaml.encode("utf-8"))
    return paths


def export_encoders(tag_dir: Path, output: Path) -> dict[str, Path]:
    """A complete training checkpoint ``tag_dir`` -> an export directory ``output``."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_dir = Path(tag_dir)
    if not (tag_dir / checkpoint.COMPLETE).is_file():
        raise FileNotFoundError(f"{tag_dir}: not a complete checkpoint (no {checkpoint.COMPLETE} marker)")
    checkpoint_safety.check_checkpoint(tag_dir)
    trainer_state = checkpoint_safety.load(tag_dir / "xkd_state.pt")
    with checkpoint_safety.weights_only_loads():
        student = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    teacher = trainer_state["teacher"]
    encoders = {
        "video_student_encoder": _fp32(student, "video_encoder."),
        "audio_student_encoder": _fp32(student, "audio_encoder."),
        "video_teacher_encoder": _fp32(teacher, "video_encoder."),
        "audio_teacher_encoder": _fp32(teacher, "audio_encoder."),
    }
    for name, state in encoders.items():
        if not state:
            raise KeyError(f"{tag_dir}: no weights for {name}")
    return write_export(output, encoders, yaml.safe_dump(trainer_state["config"], sort_keys=False),
                        {"step": str(trainer_state["step"]), "source": str(tag_dir)})


def export_initial_encoders(like: str | Path, output: str | Path, seed: int | None = None) -> dict[str, Path]:
    """Write the step-0 encoders of ``like``'s config (the random-init baseline) in the export format.

    The weights are exactly those the pretraining started from: ``torch.manual_seed(train.seed)``
    then ``XKD(config)``, as in the trainer (teachers are copies of the students at step 0).
    """
    from xkd.models.xkd import XKD

    config = export_config(like)
    torch.manual_seed(config.train.seed if seed is None else seed)
    model = XKD(config)
    parts = {"video_student_encoder": model.student.video_encoder, "audio_student_encoder": model.student.audio_encoder,
             "video_teacher_encoder": model.teacher.video_encoder, "audio_teacher_encoder": model.teacher.audio_encoder}
    return write_export(output, {name: _fp32(module.state_dict()) for name, module in parts.items()},
                        (Path(like) / CONFIG_NAME).read_text(), {"step": "0", "source": f"random init like {like}"})


def export_config(export_dir: str | Path) -> XKDConfig:
    """The resolved training config stored with an export (``config.yaml``), validated."""
    path = Path(export_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{export_dir}: not an export directory of {PRODUCER} (no {CONFIG_NAME})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    return config_from_dict(data, source=str(path))


def encoder_sha256(export_dir: str | Path, name: str) -> str:
    """sha256 of an exported encoder's safetensors file (the identity of its weights)."""
    path = encoder_path(export_dir, name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no exported encoder {name!r} (export with {PRODUCER})")
    return file_sha256(path)


def load_encoder(export_dir: str | Path, name: str = "video_teacher_encoder"):
    """Rebuild one exported encoder (``ModalityEncoder``) with its weights, in eval mode."""
    config = export_config(export_dir)
    video, audio = build_encoders(config)
    encoder = video if name.startswith("video") else audio
    if config.model.variant != "ms":
        # Shared blocks were built once; each exported encoder carries its own full copy.
        encoder.blocks = copy.deepcopy(encoder.blocks)
    encoder.load_state_dict(load_file(str(encoder_path(export_dir, name))))
    return encoder.eval()
