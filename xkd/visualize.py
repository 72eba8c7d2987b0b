"""Pictures of what the model does, logged as MLflow artifacts during pretraining.

* :func:`video_reconstruction_figure`: frames of the original global view, the masked input
  the student saw (hidden cuboids grey) and the MAE reconstruction (predicted cuboids pasted
  into the visible ones), un-normalised with the ImageNet mean / std of the loaders.
* :func:`audio_reconstruction_figure`: the same three rows for the log-mel spectrogram.
* :func:`refine_attention_figure`: the teacher's refine weights (head-averaged cross-modal
  attention, eq. 4-5) over the video token grid (t, h, w), upsampled to the frames and laid
  over them (paper Fig. 3 style).

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot state, no GUI
backend); callers log them with :meth:`xkd.tracking.Tracker.log_figure`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from xkd.models.xkd import Reconstruction

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASKED_GREY = 0.5


def unnormalize_video(video: torch.Tensor) -> torch.Tensor:
    """(3, T, H, W) ImageNet-normalised -> (T, H, W, 3) RGB in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1, 1)
    return (video.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 3, 0)


def frame_indices(frames: int, shown: int) -> list[int]:
    """At most ``shown`` frame indices spread evenly over ``frames``."""
    shown = min(shown, frames)
    return [round(i * (frames - 1) / max(shown - 1, 1)) for i in range(shown)]


def _hide_axes(axes) -> None:
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])


def video_reconstruction_figure(rec: Reconstruction, item: int = 0, frames: int = 8, title: str = "") -> Figure:
    """Rows original / masked input / reconstruction, columns evenly spaced frames of sample ``item``."""
    original = unnormalize_video(rec.original[item])
    mask = rec.mask[item, 0].float().cpu().unsqueeze(-1)  # (T, H, W, 1), 1 = hidden from the encoder
    pasted = rec.prediction[item] * rec.mask[item] + rec.original[item] * (1 - rec.mask[item])
    rows = {"original": original, "masked input": original * (1 - mask) + MASKED_GREY * mask,
            "reconstruction": unnormalize_video(pasted)}
    shown = frame_indices(original.shape[0], frames)
    figure = Figure(figsize=(1.6 * len(shown) + 1.2, 1.7 * len(rows) + 0.6), layout="constrained")
    axes = figure.subplots(len(rows), len(shown), squeeze=False)
    for r, (label, video) in enumerate(rows.items()):
        for c, t in enumerate(shown):
            axes[r, c].imshow(video[t].numpy())
            if r == 0:
                axes[r, c].set_title(f"frame {t}", fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=9)
    _hide_axes(axes)
    masked = float(rec.mask[item].mean())
    figure.suptitle(f"{title}video reconstruction ({masked:.0%} of cuboids masked)", fontsize=10)
    return figure


def audio_reconstruction_figure(rec: Reconstruction, item: int = 0, title: str = "") -> Figure:
    """Log-mel rows original / masked input (hidden patches blank) / reconstruction of sample ``item``."""
    original = rec.original[item, 0].float().cpu()
    mask = rec.mask[item, 0].float().cpu()
    prediction = rec.prediction[item, 0].float().cpu()
    rows = {"original": original, "masked input": original.masked_fill(mask.bool(), float("nan")),
            "reconstruction": prediction * mask + original * (1 - mask)}
    low, high = float(original.min()), float(original.max())
    figure = Figure(figsize=(8, 2.0 * len(rows) + 0.6), layout="constrained")
    axes = figure.subplots(len(rows), 1, squeeze=False)
    for ax, (label, spectrogram) in zip(axes[:, 0], rows.items()):
        image = ax.imshow(spectrogram.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high,
                          interpolation="nearest")
        ax.set_ylabel(f"{label}\nmel bin", fontsize=9)
    axes[-1, 0].set_xlabel("frame", fontsize=9)
    figure.colorbar(image, ax=axes[:, 0], shrink=0.8, label="normalised log-mel")
    figure.suptitle(f"{title}audio reconstruction ({float(mask.mean()):.0%} of patches masked)", fontsize=10)
    return figure


def attention_volume(weights: torch.Tensor, grid: tuple[int, int, int], size: tuple[int, int, int]) -> torch.Tensor:
    """Token weights (N,) in (t, h, w) raster order -> (T, H, W) by trilinear upsampling."""
    volume = weights.float().cpu().reshape(1, 1, *grid)
    return F.interpolate(volume, size=size, mode="trilinear", align_corners=False)[0, 0]


def refine_attention_figure(video: torch.Tensor, weights: torch.Tensor, grid: tuple[int, int, int], item: int = 0,
                            frames: int = 8, title: str = "") -> Figure:
    """The teacher's refine weights over the frames of the view it encoded.

    Args:
        video: (B, 3, T, H, W) the teacher's (ImageNet-normalised) video view.
        weights: (B, N) ``TeacherTargets.video_weights``; N = t * h * w tokens of ``grid``.
    Top row: the frames; bottom row: the weights (min-max scaled per clip) over them.
    """
    clip = unnormalize_video(video[item])
    heat = attention_volume(weights[item], grid, tuple(clip.shape[:3]))
    low, high = float(heat.min()), float(heat.max())
    scaled = (heat - low) / max(high - low, 1e-12)
    shown = frame_indices(clip.shape[0], frames)
    figure = Figure(figsize=(1.6 * len(shown) + 1.6, 4.0), layout="constrained")
    axes = figure.subplots(2, len(shown), squeeze=False)
    for c, t in enumerate(shown):
        axes[0, c].imshow(clip[t].numpy())
        axes[0, c].set_title(f"frame {t}", fontsize=8)
        axes[1, c].imshow(clip[t].numpy())
        image = axes[1, c].imshow(scaled[t].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[0, 0].set_ylabel("frames", fontsize=9)
    axes[1, 0].set_ylabel("refine weights", fontsize=9)
    _hide_axes(axes)
    figure.colorbar(image, ax=axes[1, :], shrink=0.9, label="scaled weight")
    figure.suptitle(f"{title}teacher refine attention over video tokens {grid[0]}x{grid[1]}x{grid[2]} "
                    f"(weights {low:.3g} to {high:.3g}, scaled to 0-1)", fontsize=10)
    return figure
