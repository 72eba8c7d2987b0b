"""Parameter counts and token counts of an XKD model, as one JSON object.

    python -m xkd.summary --config configs/xkd_ms_k400.yaml [key.sub=value ...]

The model is built on the ``meta`` device: shapes only, no memory and no initialisation
cost, so even ViT-L summarises in a second. Counts are of unique tensors: a block stack
shared between modalities (MAS, MATS) is counted once in ``trainable``, ``teacher`` and
``total``, while each per-module count includes everything that module holds.
"""
from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from xkd.config import XKDConfig, load_config
from xkd.models import XKD
from xkd.models.masking import num_visible


def build_model(config: XKDConfig, device: str | torch.device = "meta") -> XKD:
    """``XKD(config)`` with its parameters created directly on ``device``."""
    with torch.device(device):
        return XKD(config)


def token_counts(config: XKDConfig) -> dict[str, int]:
    """Patch tokens per view (CLS excluded) and tokens left visible by masking (docs/method.md §2)."""
    m, v = config.model, config.views

    def video_tokens(frames: int, size: int) -> int:
        return (frames // m.video_tubelet) * (size // m.video_patch) ** 2

    def audio_tokens(frames: int) -> int:
        return (v.mel_bins // m.audio_patch_freq) * (frames // m.audio_patch_time)

    counts = {
        "video_global_tokens": video_tokens(v.video_global_frames, v.video_global_size),
        "video_local_tokens": video_tokens(v.video_local_frames, v.video_local_size),
        "audio_global_tokens": audio_tokens(v.audio_global_frames),
        "audio_local_tokens": audio_tokens(v.audio_local_frames),
    }
    counts["video_visible"] = num_visible(counts["video_global_tokens"], m.video_mask_ratio)
    counts["audio_visible"] = num_visible(counts["audio_global_tokens"], m.audio_mask_ratio)
    return counts


def count(module: nn.Module) -> int:
    """Elements of the unique parameters of ``module`` (a tensor reached twice counts once)."""
    return sum(p.numel() for p in module.parameters())


def shared_parameters(a: nn.Module, b: nn.Module) -> list[nn.Parameter]:
    """Parameters that ``a`` and ``b`` both hold (the same tensor objects)."""
    ids = {id(p) for p in b.parameters()}
    return [p for p in a.parameters() if id(p) in ids]


def fully_shared(a: nn.Module, b: nn.Module) -> bool:
    """True when every parameter of ``a`` is also one of ``b`` (and ``a`` has any)."""
    params = list(a.parameters())
    return bool(params) and len(shared_parameters(a, b)) == len(params)


def parameter_summary(model: XKD) -> dict:
    """Parameter counts per module, unique totals, and facts on sharing and tokens (see module doc)."""
    student, teacher = model.student, model.teacher
    shared_student = shared_parameters(student.video_encoder.blocks, student.audio_encoder.blocks)
    return {
        "video_student_encoder": count(student.video_encoder),
        "audio_student_encoder": count(student.audio_encoder),
        "video_teacher_encoder": count(teacher.video_encoder),
        "audio_teacher_encoder": count(teacher.audio_encoder),
        "video_decoder": count(student.video_decoder),
        "audio_decoder": count(student.audio_decoder),
        "video_head": count(student.video_head),
        "audio_head": count(student.audio_head),
        "video_teacher_head": count(teacher.video_head),
        "audio_teacher_head": count(teacher.audio_head),
        "trainable": sum(p.numel() for p in student.parameters() if p.requires_grad),
        "teacher": count(teacher),
        "total": count(model),
        "shared": {
            "variant": model.config.model.variant,
            "student_blocks_shared": fully_shared(student.video_encoder.blocks, student.audio_encoder.blocks),
            "teacher_blocks_shared": fully_shared(teacher.video_encoder.blocks, teacher.audio_encoder.blocks),
            # Elements in the student block stack used by both modalities (0 for ms).
            "shared_block_parameters": sum(p.numel() for p in shared_student),
            **token_counts(model.config),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/xkd_ms_k400.yaml")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. model.variant=mas")
    parser.add_argument("--device", default="meta", help="where to build the model (default: meta)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    print(json.dumps(parameter_summary(build_model(config, args.device)), indent=2))


if __name__ == "__main__":
    main()
