"""ffmpeg argument lists for one clip -> (video-only file, 16 kHz mono FLAC), and running them.

One ffmpeg process decodes the source once and writes both outputs. Every option that
could make the bytes vary between runs is pinned: one thread for decoding, filtering
and encoding, ``-map_metadata -1``, ``-fflags +bitexact`` (muxers: no version strings,
no random Matroska segment id, no dates) and ``-flags +bitexact`` (encoders). ffmpeg is
called with an argument list (no shell), as a child that dies with the calling process
(``probe.run_tool``).
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from xkd.data import skip_reasons as sr
from xkd.data.probe import SourceInfo, run_tool

FFMPEG_TIMEOUT_S = 1800
VIDEO_CODECS = ("vp9", "vp8", "mjpeg", "h264")
# Codecs DALI's CPU video decoder handles; h264 needs NVDEC (device="mixed").
CPU_DECODABLE_CODECS = ("vp9", "vp8", "mjpeg")
# Largest distance between keyframes (ffmpeg -g), in frames: 1 s at the default 8 fps, so a window
# seeking to its start decodes at most 7 frames it does not need (issue 15). Measured with both CPU
# loaders seeking (PyAV) and the DALI source cutting the window (xkd/data/video_cut.py): GOP 8 costs
# a training sample ~10 % less CPU than GOP 64 for 1.66x the video bytes, ~1.15x the shard bytes
# (BENCHMARKS.md, "Keyframe interval" and "No probe decode"). Splits built before the option used 64.
KEYFRAME_INTERVAL = 8
LEGACY_KEYFRAME_INTERVAL = 64

# Encoder options per --video-codec (after "-c:v"; "-g" is added for the inter-frame codecs),
# and the container each is written in.
ENCODER_ARGS: dict[str, list[str]] = {
    "vp9": ["libvpx-vp9", "-b:v", "0", "-crf", "32", "-deadline", "good", "-cpu-used", "4", "-row-mt", "0",
            "-pix_fmt", "yuv420p"],
    "vp8": ["libvpx", "-b:v", "1M", "-crf", "10", "-deadline", "good", "-cpu-used", "4", "-pix_fmt", "yuv420p"],
    "mjpeg": ["mjpeg", "-q:v", "5", "-pix_fmt", "yuvj420p"],
    "h264": ["libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"],
}
INTRA_ONLY_CODECS = ("mjpeg",)  # every frame is a keyframe: no -g
CONTAINERS = {"vp9": "webm", "vp8": "webm", "mjpeg": "matroska", "h264": "matroska"}

_DETERMINISM = ["-threads", "1", "-flags", "+bitexact", "-fflags", "+bitexact",
                "-map_metadata", "-1", "-map_chapters", "-1"]


@dataclass(frozen=True)
class TranscodeSettings:
    fps: int = 8
    short_side: int = 128
    audio_rate: int = 16000
    video_codec: str = "vp9"
    keyframe_interval: int = KEYFRAME_INTERVAL  # frames between keyframes at most (-g)

    def __post_init__(self) -> None:
        if self.video_codec not in VIDEO_CODECS:
            raise ValueError(f"video codec {self.video_codec!r}: expected one of {VIDEO_CODECS}")
        if self.keyframe_interval < 1:
            raise ValueError(f"keyframe interval {self.keyframe_interval}: expected at least 1 frame")
        if self.fps <= 0 or self.audio_rate <= 0:
            raise ValueError(f"fps ({self.fps}) and audio rate ({self.audio_rate}) must be positive")
        if self.short_side <= 0 or self.short_side % 2:
            raise ValueError(f"short side {self.short_side}: expected a positive even number of pixels")


def target_size(display_width: int, display_height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side``, the aspect kept, both even."""
    scale = short_side / min(display_width, display_height)
    width = max(2, 2 * round(display_width * scale / 2))
    height = max(2, 2 * round(display_height * scale / 2))
    return (short_side, height) if display_width <= display_height else (width, short_side)


def encoder_args(settings: TranscodeSettings) -> list[str]:
    """The encoder and its options (after "-c:v"), with the keyframe interval where the codec has one."""
    codec = settings.video_codec
    gop = [] if codec in INTRA_ONLY_CODECS else ["-g", str(settings.keyframe_interval)]
    return [*ENCODER_ARGS[codec], *gop]


def video_output_args(info: SourceInfo, settings: TranscodeSettings, video_out: Path) -> list[str]:
    """Options for the video-only output (stream ``0:<video index>``)."""
    width, height = target_size(info.video.display_width, info.video.display_height, settings.short_side)
    filters = f"fps={settings.fps},scale={width}:{height}:flags=bicubic,setsar=1"
    return ["-map", f"0:{info.video.index}", "-an", "-sn", "-dn", "-vf", filters,
            "-c:v", *encoder_args(settings), *_DETERMINISM,
            "-f", CONTAINERS[settings.video_codec], "-y", str(video_out)]


def audio_output_args(stream_spec: str, settings: TranscodeSettings, audio_out: Path) -> list[str]:
    """Options for the mono FLAC output from ``stream_spec`` (``0:<index>`` or a silence input)."""
    return ["-map", stream_spec, "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(settings.audio_rate),
            "-c:a", "flac", "-sample_fmt", "s16", "-compression_level", "5", *_DETERMINISM,
            "-f", "flac", "-y", str(audio_out)]


def clip_command(source: Path, info: SourceInfo, settings: TranscodeSettings, video_out: Path | None,
                 audio_out: Path | None) -> list[str]:
    """The ffmpeg argument list for one clip: the video output (none when ``video_out`` is None:
    an audio-only sample), plus the audio output from the source's audio stream unless
    ``audio_out`` is None (no audio: see ``silence_command``)."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1", "-i", str(source)]
    if video_out is not None:
        cmd += video_output_args(info, settings, video_out)
    if audio_out is not None:
        if info.audio is None:
            raise ValueError(f"{source}: has no audio stream to write to {audio_out}")
        cmd += audio_output_args(f"0:{info.audio.index}", settings, audio_out)
    return cmd


def silence_command(seconds: float, settings: TranscodeSettings, audio_out: Path) -> list[str]:
    """ffmpeg argument list writing ``seconds`` of digital silence as the clip's FLAC."""
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
            "-t", f"{seconds:.6f}", "-i", f"anullsrc=r={settings.audio_rate}:cl=mono",
            *audio_output_args("0:a:0", settings, audio_out)]


def run_ffmpeg(cmd: list[str], source: Path) -> str:
    """Run an ffmpeg argument list; return its stderr, or raise ``ClipSkipped(transcode_failed)``."""
    try:
        code, _, stderr_bytes = run_tool(cmd, FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise sr.ClipSkipped(sr.TRANSCODE_FAILED, f"{source}: ffmpeg ran over {FFMPEG_TIMEOUT_S} s") from None
    stderr = stderr_bytes.decode("utf-8", "replace")
    if code != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        tail = " | ".join(lines[-3:])[:500] or f"exit code {code}"
        raise sr.ClipSkipped(sr.TRANSCODE_FAILED, f"{source}: ffmpeg failed: {tail}")
    return stderr
