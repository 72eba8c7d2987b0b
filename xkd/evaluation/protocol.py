"""What an evaluation clip is, per protocol (docs/method.md §1 and §6; paper A.5-A.6, Tables S1, S2, S6, S7).

* Video: 32 frames at 8 fps (4 s) at 112x112 for linear evaluation; 224x224 for fine-tuning
  (the position table is interpolated by the encoder, docs/method.md §2.2).
* Audio: 4 s of 16 kHz mono -> 80 x 448 log-mel, with the log-mel recipe of the pretraining
  config (docs/method.md §1), so that features see the statistics the encoder was trained on.
* Test: ``k`` clips per item, uniformly spaced over the item (3 for UCF101/HMDB51/ESC50, 8 for
  FSD50K), no augmentation. Train (linear evaluation): random clips with the linear-eval
  augmentation of docs/method.md §1.3 (video multi-scale crop (0.08, 1), flip 0.5, colour jitter
  (0.4, 0.4, 0.4, 0.2), grayscale 0.2; audio volume jitter +-0.1).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from xkd.config import ModelConfig, ViewsConfig
from xkd.evaluation.errors import EvalInputError

MODALITIES = ("video", "audio")
ENCODER_ROLES = ("teacher", "student")
# Clips per item of the paper's linear protocols (A.5): 25 random training clips per video,
# ~10 epochs of augmented features for ESC50, 3 uniformly spaced test clips (8 for FSD50K).
DEFAULT_TRAIN_CLIPS = {"video": 25, "audio": 10}
DEFAULT_TEST_CLIPS = 3


@dataclass(frozen=True)
class LinearAugment:
    """Linear-evaluation augmentation (docs/method.md §1.3, paper Tables S1/S2)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip_probability: float = 0.5
    color_jitter: bool = True  # ColorJitter(0.4, 0.4, 0.4, 0.2), as for the global views
    grayscale_probability: float = 0.2
    volume_jitter: float = 0.1  # audio gain x U(1 - v, 1 + v)


@dataclass(frozen=True)
class ClipSpec:
    """Geometry of one evaluation clip of one modality.

    ``seconds`` is the window every clip covers; the video window is ``frames / fps`` and must
    equal it, so that audio and video clips of the same item cover the same time span (late
    fusion concatenates them clip by clip).
    """

    modality: str
    frames: int = 32
    size: int = 112
    fps: int = 8
    seconds: float = 4.0

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality {self.modality!r}: expected one of {MODALITIES}")
        # Frames, size, fps and seconds are user options (--frames, --size, --fps, --seconds).
        if self.frames <= 0 or self.size <= 0 or self.fps <= 0 or self.seconds <= 0:
            raise EvalInputError(f"{self.modality} clip: frames {self.frames}, size {self.size}, fps {self.fps} and "
                                 f"seconds {self.seconds} must all be positive")
        if self.modality == "video" and abs(self.frames / self.fps - self.seconds) > 1e-6:
            raise EvalInputError(f"video clip of {self.frames} frames at {self.fps} fps is {self.frames / self.fps} s, "
                                 f"but the window is {self.seconds} s")

    def views(self, pretrain_views: ViewsConfig) -> ViewsConfig:
        """The pretraining views with this clip's geometry as the 'global' view: the log-mel recipe
        (n_fft, hop, mel bins, normalisation) stays the one the encoder was trained with."""
        return dataclasses.replace(pretrain_views, video_fps=self.fps, video_global_frames=self.frames,
                                   video_global_size=self.size, audio_global_seconds=self.seconds)

    def check_tiles(self, model: ModelConfig, views: ViewsConfig) -> None:
        """Raise when the clip does not tile into the encoder's patches (docs/method.md §2.1)."""
        if self.modality == "video":
            if self.frames % model.video_tubelet or self.size % model.video_patch:
                raise EvalInputError(f"video clip {self.frames}x{self.size}x{self.size} does not tile into the "
                                     f"encoder's cuboids of {model.video_tubelet}x{model.video_patch}x"
                                     f"{model.video_patch}: --frames must be a multiple of {model.video_tubelet} "
                                     f"and --size of {model.video_patch}")
        else:
            frames = views.audio_frames(self.seconds)
            if frames % model.audio_patch_time or views.mel_bins % model.audio_patch_freq:
                raise EvalInputError(f"audio clip of {self.seconds} s ({views.mel_bins}x{frames} log-mel) does not "
                                     f"tile into the encoder's patches of {model.audio_patch_freq}x"
                                     f"{model.audio_patch_time}: --seconds must give a multiple of "
                                     f"{model.audio_patch_time} spectrogram frames")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def linear_clip_spec(modality: str, frames: int = 32, size: int = 112, fps: int = 8, seconds: float = 4.0) -> ClipSpec:
    """The linear-evaluation clip (docs/method.md §6): video 32x112x112 at 8 fps, audio 4 s."""
    if modality == "video":
        return ClipSpec("video", frames=frames, size=size, fps=fps, seconds=frames / fps)
    return ClipSpec("audio", frames=frames, size=size, fps=fps, seconds=seconds)


def encoder_name(modality: str, role: str) -> str:
    """File stem of an exported encoder (xkd/engine/export.py): ``video_teacher_encoder`` etc."""
    if modality not in MODALITIES or role not in ENCODER_ROLES:
        raise ValueError(f"encoder {modality!r}/{role!r}: expected one of {MODALITIES} and one of {ENCODER_ROLES}")
    return f"{modality}_{role}_encoder"
