"""Turn a training checkpoint into plain fp32 state dicts of the four encoders (for eval/).

Student weights are consolidated from the ZeRO partitions with DeepSpeed's own
``get_fp32_state_dict_from_zero_checkpoint`` (any stage, any world size); teacher weights come
from ``xkd_state.pt``. Output: ``{video,audio}_{student,teacher}_encoder.safetensors`` and
``config.yaml`` (the resolved training config), loadable with :func:`load_encoder`. Every
checkpoint file is scanned and loaded weights-only (:mod:`xkd.engine.checkpoint_safety`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from xkd.config import config_from_dict
from xkd.engine import checkpoint, checkpoint_safety
from xkd.models.xkd import build_encoders

ENCODER_NAMES = ("video_student_encoder", "audio_student_encoder", "video_teacher_encoder", "audio_teacher_encoder")


def _sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v.detach().float().contiguous().clone() for k, v in state.items() if k.startswith(prefix)}


def export_encoders(tag_dir: Path, output: Path) -> dict[str, Path]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_dir = Path(tag_dir)
    if not (tag_dir / checkpoint.COMPLETE).is_file():
        raise FileNotFoundError(f"{tag_dir}: not a complete checkpoint (no {checkpoint.COMPLETE} marker)")
    checkpoint_safety.check_checkpoint(tag_dir)
    trainer_state = checkpoint_safety.load(tag_dir / "xkd_state.pt")
    with checkpoint_safety.weights_only_loads():
        student = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    teacher = trainer_state["teacher"]
    output.mkdir(parents=True, exist_ok=True)
    parts = {
        "video_student_encoder": _sub_state(student, "video_encoder."),
        "audio_student_encoder": _sub_state(student, "audio_encoder."),
        "video_teacher_encoder": _sub_state(teacher, "video_encoder."),
        "audio_teacher_encoder": _sub_state(teacher, "audio_encoder."),
    }
    paths = {}
    for name, state in parts.items():
        if not state:
            raise KeyError(f"{tag_dir}: no weights for {name}")
        paths[name] = output / f"{name}.safetensors"
        save_file(state, str(paths[name]), metadata={"step": str(trainer_state["step"]), "source": str(tag_dir)})
    (output / "config.yaml").write_text(yaml.safe_dump(trainer_state["config"], sort_keys=False))
    return paths


def load_encoder(export_dir: Path, name: str = "video_teacher_encoder"):
    """Rebuild one exported encoder (``ModalityEncoder``) with its weights, in eval mode."""
    export_dir = Path(export_dir)
    config = config_from_dict(yaml.safe_load((export_dir / "config.yaml").read_text()))
    video, audio = build_encoders(config)
    encoder = video if name.startswith("video") else audio
    if config.model.variant != "ms":
        # Shared blocks were built once; each exported encoder carries its own full copy.
        import copy

        encoder.blocks = copy.deepcopy(encoder.blocks)
    encoder.load_state_dict(load_file(str(export_dir / f"{name}.safetensors")))
    return encoder.eval()
