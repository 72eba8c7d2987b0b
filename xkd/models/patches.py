"""Video cuboid and audio patch tokenisation (docs/method.md §2.1).

The same ``patchify`` feeds the patch embedding and the reconstruction target, so the
layout of a token's vector is defined in exactly one place.
"""
from __future__ import annotations

import torch
from torch import nn


class VideoPatchEmbedding(nn.Module):
    """Cuboids of ``tubelet`` x ``patch`` x ``patch`` pixels -> flatten -> Linear.

    Input (B, C, T, H, W); tokens in (t, h, w) raster order; each token vector is laid
    out as (tubelet, patch, patch, channel). Flatten + Linear equals a strided Conv3d.
    """

    def __init__(self, embed_dim: int, tubelet: int = 4, patch: int = 16, channels: int = 3):
        super().__init__()
        self.tubelet, self.patch, self.channels = tubelet, patch, channels
        self.patch_dim = tubelet * patch * patch * channels
        self.proj = nn.Linear(self.patch_dim, embed_dim)

    def grid(self, shape: torch.Size) -> tuple[int, int, int]:
        _, channels, frames, height, width = shape
        if channels != self.channels or frames % self.tubelet or height % self.patch or width % self.patch:
            raise ValueError(
                f"video of shape {tuple(shape)} does not tile into {self.channels}-channel cuboids of "
                f"{self.tubelet}x{self.patch}x{self.patch}"
            )
        return frames // self.tubelet, height // self.patch, width // self.patch

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        t, h, w = self.grid(video.shape)
        b, c = video.shape[:2]
        x = video.reshape(b, c, t, self.tubelet, h, self.patch, w, self.patch)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, t, h, w, tubelet, patch, patch, c
        return x.reshape(b, t * h * w, self.patch_dim)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        t, h, w = grid
        b = tokens.shape[0]
        x = tokens.reshape(b, t, h, w, self.tubelet, self.patch, self.patch, self.channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, self.channels, t * self.tubelet, h * self.patch, w * self.patch)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.proj(self.patchify(video))


class AudioPatchEmbedding(nn.Module):
    """Log-mel patches of ``patch_freq`` bins x ``patch_time`` frames -> flatten -> Linear.

    Input (B, 1, F, T); tokens in (frequency, time) raster order.
    """

    def __init__(self, embed_dim: int, patch_freq: int = 4, patch_time: int = 16):
        super().__init__()
        self.patch_freq, self.patch_time = patch_freq, patch_time
        self.patch_dim = patch_freq * patch_time
        self.proj = nn.Linear(self.patch_dim, embed_dim)

    def grid(self, shape: torch.Size) -> tuple[int, int]:
        _, channels, freq, time = shape
        if channels != 1 or freq % self.patch_freq or time % self.patch_time:
            raise ValueError(
                f"spectrogram of shape {tuple(shape)} does not tile into 1-channel patches of "
                f"{self.patch_freq}x{self.patch_time}"
            )
        return freq // self.patch_freq, time // self.patch_time

    def patchify(self, spectrogram: torch.Tensor) -> torch.Tensor:
        f, t = self.grid(spectrogram.shape)
        b = spectrogram.shape[0]
        x = spectrogram.reshape(b, f, self.patch_freq, t, self.patch_time).permute(0, 1, 3, 2, 4)
        return x.reshape(b, f * t, self.patch_dim)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        f, t = grid
        b = tokens.shape[0]
        x = tokens.reshape(b, f, t, self.patch_freq, self.patch_time).permute(0, 1, 3, 2, 4)
        return x.reshape(b, 1, f * self.patch_freq, t * self.patch_time)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.proj(self.patchify(spectrogram))
