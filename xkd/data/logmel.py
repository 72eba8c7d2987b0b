"""Log-mel spectrogram exactly per docs/method.md §1.2, in PyTorch (torchaudio).

STFT n_fft 1024 (Hann, 64 ms), hop 143, centred with reflect padding, power 2; 80 Slaney
mel bands 0-8 kHz with Slaney area normalisation; natural log(mel + eps); then
(x - mean) / std with the data set's scalar statistics (docs/method.md §1.2). 4 s -> 80x448, 1 s -> 80x112.
Both loaders deliver waveforms; the trainer computes this on its device (xkd/data/audio_finish.py).
"""
from __future__ import annotations

import torch
import torchaudio
from torch import nn

from xkd.config import ViewsConfig


class LogMel(nn.Module):
    def __init__(self, views: ViewsConfig):
        super().__init__()
        self.views = views
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=views.audio_sample_rate, n_fft=views.n_fft, win_length=views.n_fft,
            hop_length=views.hop_length, f_min=views.mel_fmin, f_max=views.mel_fmax, n_mels=views.mel_bins,
            window_fn=torch.hann_window, power=2.0, center=True, pad_mode="reflect", norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(..., samples) float waveform -> (..., mel_bins, frames) normalised log-mel."""
        v = self.views
        return (torch.log(self.mel(waveform) + v.mel_log_eps) - v.mel_mean) / v.mel_std
