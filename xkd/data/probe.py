"""ffprobe a media file into typed stream info, or a clear reason to skip it.

``probe_source`` reads an input clip with ffprobe (what to transcode, and from which
streams); ``probe_video_output`` (demuxed packets) and ``count_audio_samples`` (decoded
samples) measure the transcoded outputs, so the frame and sample counts stored in a sample
are measured, never computed.

``run_tool`` runs ffprobe and ffmpeg (also for ``transcode``) as children tied to this process:
when it dies, even by SIGKILL, the kernel kills them too (Linux), so a killed make_shards
leaves no transcode running.
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile

from xkd.data import skip_reasons as sr

FFPROBE_TIMEOUT_S = 120

# Demuxers that recognise a file but hold no video clip (stills, text, subtitles, playlists).
NON_VIDEO_CONTAINERS = (
    "image2", "tty", "srt", "ass", "webvtt", "subviewer", "microdvd", "lrc", "sami", "jacosub",
    "mpl2", "pjs", "realtext", "stl", "vplayer", "hls", "concat", "ffmetadata",
)
# Extensions of files that are meant to be media: an unreadable one is "corrupt", not "not media".
MEDIA_EXTENSIONS = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg", ".ts", ".3gp",
    ".ogv", ".wmv", ".mts", ".m2ts", ".vob", ".asf",
)


@dataclass(frozen=True)
class VideoStream:
    index: int  # absolute stream index, for ``-map 0:<index>``
    codec: str
    width: int  # coded size
    height: int
    display_width: int  # after sample aspect ratio and rotation: what a player shows
    display_height: int
    fps: float | None
    duration: float | None


@dataclass(frozen=True)
class AudioStream:
    index: int
    codec: str
    sample_rate: int
    channels: int
    duration: float | None


@dataclass(frozen=True)
class SourceInfo:
    """What a source clip holds; ``duration`` is the video stream's (else the container's).
    ``video`` is None only for an audio-only source probed with ``allow_audio_only`` (its
    duration is then the audio stream's, else the container's)."""

    container: str
    duration: float | None
    video: VideoStream | None
    audio: AudioStream | None


@dataclass(frozen=True)
class VideoOutputInfo:
    codec: str
    width: int
    height: int
    num_frames: int


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_RUNNING: set[subprocess.Popen] = set()  # the tools this process is waiting for (see kill_tools)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``; it
    fires also when the parent is SIGKILLed, which no handler sees), and exit at once when the
    parent died before that took effect (this process was already handed to another parent).
    Strictly the signal comes when the *thread* that forked this process ends: the workers and
    their ffmpeg are forked by the main thread of make_shards and of the worker."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def kill_tools() -> None:
    """SIGKILL every tool ``run_tool`` is waiting for (a worker whose parent is gone, on its way out)."""
    for proc in list(_RUNNING):
        proc.kill()


def run_tool(cmd: list[str], timeout: float) -> tuple[int, bytes, bytes]:
    """Run ``cmd`` (ffmpeg, ffprobe) as a child that dies with this process: (exit code, stdout,
    stderr); ``subprocess.TimeoutExpired`` after ``timeout`` seconds (the child is killed)."""
    # preexec_fn runs in the child between fork and exec: the death signal is set before ffmpeg starts.
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=functools.partial(die_with_parent, os.getpid())) as proc:
        _RUNNING.add(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            _RUNNING.discard(proc)
    return proc.returncode, stdout, stderr


def run_ffprobe(args: list[str], path: Path) -> tuple[int, dict, str]:
    """Run ``ffprobe -v error -of json <args> <path>``: (exit code, parsed JSON, stderr)."""
    cmd = ["ffprobe", "-v", "error", "-of", "json", *args, str(path)]
    try:
        code, stdout, stderr = run_tool(cmd, FFPROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return 124, {}, f"ffprobe timed out after {FFPROBE_TIMEOUT_S} s"
    try:
        data = json.loads(stdout or b"{}")
    except json.JSONDecodeError:
        data = {}
    return code, data, stderr.decode("utf-8", "replace").strip()


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start >= len(head) - 3  # a multi-byte character cut by the read limit
    return True


def _rate(text: str | None) -> float | None:
    try:
        value = Fraction(text or "")
    except (ValueError, ZeroDivisionError):
        return None
    return float(value) if value > 0 else None


def _float(text: object) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _stream_duration(stream: dict) -> float | None:
    """Seconds from the stream header, else from Matroska's ``DURATION`` tag (HH:MM:SS.nnnnnnnnn)."""
    seconds = _float(stream.get("duration"))
    tag = (stream.get("tags") or {}).get("DURATION") or (stream.get("tags") or {}).get("duration")
    if seconds is None and tag:
        try:
            hours, minutes, secs = tag.split(":")
            seconds = _float(int(hours) * 3600 + int(minutes) * 60 + float(secs))
        except ValueError:
            return None
    return seconds


def _rotation(stream: dict) -> int:
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(float(side["rotation"])))
    return int(stream.get("tags", {}).get("rotate", 0) or 0)


def _video_stream(stream: dict) -> VideoStream:
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    sar = _rate((stream.get("sample_aspect_ratio") or "1:1").replace(":", "/")) or 1.0
    display_w, display_h = max(1, round(width * sar)), height
    if abs(_rotation(stream)) % 180 == 90:
        display_w, display_h = display_h, display_w
    return VideoStream(
        index=int(stream["index"]), codec=str(stream.get("codec_name", "unknown")),
        width=width, height=height, display_width=display_w, display_height=display_h,
        fps=_rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate")),
        duration=_stream_duration(stream),
    )


def _audio_stream(stream: dict) -> AudioStream:
    return AudioStream(
        index=int(stream["index"]), codec=str(stream.get("codec_name", "unknown")),
        sample_rate=int(stream.get("sample_rate") or 0), channels=int(stream.get("channels") or 0),
        duration=_stream_duration(stream),
    )


def probe_source(path: Path, allow_audio_only: bool = False) -> SourceInfo:
    """Probe an input clip; raise :class:`ClipSkipped` with the reason it cannot be used.
    ``allow_audio_only``: a source with an audio stream and no video stream is usable
    (``--no-video-policy audio-only``) instead of ``no_video_stream``."""
    if not path.is_file():
        raise sr.ClipSkipped(sr.MISSING_FILE, f"{path}: no such file")
    if path.stat().st_size == 0:
        raise sr.ClipSkipped(sr.EMPTY_FILE, f"{path}: zero bytes")
    with path.open("rb") as fh:
        head = fh.read(4096)
    code, data, stderr = run_ffprobe(["-show_format", "-show_streams"], path)
    if code != 0 or "format" not in data:
        if _looks_like_text(head):
            raise sr.ClipSkipped(sr.NOT_MEDIA, f"{path}: a text file, not audio/video")
        if "moov atom not found" in stderr and head[4:8] == b"ftyp":
            raise sr.ClipSkipped(sr.TRUNCATED, f"{path}: MP4 without its index (moov atom), the file ends early")
        reason = sr.CORRUPT if path.suffix.lower() in MEDIA_EXTENSIONS else sr.NOT_MEDIA
        why = _last_line(stderr) or f"exit code {code}"
        raise sr.ClipSkipped(reason, f"{path}: ffprobe cannot read it: {why}")

    container = str(data["format"].get("format_name", "unknown"))
    streams = data.get("streams", []) or []
    if container in NON_VIDEO_CONTAINERS or container.endswith("_pipe"):
        raise sr.ClipSkipped(sr.UNSUPPORTED_CONTAINER, f"{path}: container {container!r} holds no video clip")
    videos = [s for s in streams if s.get("codec_type") == "video"
              and not (s.get("disposition") or {}).get("attached_pic")]
    audios = [s for s in streams if s.get("codec_type") == "audio"
              and int(s.get("channels") or 0) > 0 and int(s.get("sample_rate") or 0) > 0]
    if not videos and allow_audio_only and audios:
        audio = _audio_stream(audios[0])
        return SourceInfo(container=container, duration=audio.duration or _float(data["format"].get("duration")),
                          video=None, audio=audio)
    if not videos:
        kinds = sorted({str(s.get("codec_type")) for s in streams}) or ["none"]
        raise sr.ClipSkipped(sr.NO_VIDEO, f"{path}: no video stream (streams: {', '.join(kinds)})")
    video = _video_stream(videos[0])
    if video.width <= 0 or video.height <= 0:
        raise sr.ClipSkipped(sr.CORRUPT, f"{path}: video stream {video.index} has no frame size")
    duration = video.duration or _float(data["format"].get("duration"))
    return SourceInfo(container=container, duration=duration, video=video,
                      audio=_audio_stream(audios[0]) if audios else None)


def probe_video_output(path: Path) -> VideoOutputInfo:
    """Codec, size and frame count of a transcoded video file: its demuxed packets are counted
    (what ``ffprobe -count_packets`` does, in-process with PyAV: ~1 ms instead of an ffprobe
    process per clip). One packet is one frame for the codecs written here (VP9 superframes
    carry their hidden alt-ref frames inside)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise sr.ClipSkipped(sr.NO_FRAMES, f"{path}: transcoded file has no video stream")
            stream = container.streams.video[0]
            frames = sum(1 for packet in container.demux(stream) if packet.size)
            context = stream.codec_context
            return VideoOutputInfo(codec=context.name, width=context.width, height=context.height, num_frames=frames)
    except av.error.FFmpegError as err:
        raise sr.ClipSkipped(sr.NO_FRAMES, f"{path}: transcoded video unreadable: {err}") from None


def count_audio_samples(path: Path) -> tuple[int, int, int, bool]:
    """Decode a transcoded audio file: (samples per channel, sample rate, channels, all zero)."""
    count, all_zero = 0, True
    with soundfile.SoundFile(str(path)) as audio:
        rate, channels = int(audio.samplerate), int(audio.channels)
        try:  # in blocks: a FLAC header may announce no length (or a wrong one)
            for block in audio.blocks(blocksize=1 << 16, dtype="int16", always_2d=True):
                count += block.shape[0]
                all_zero = all_zero and not np.any(block)
        except soundfile.LibsndfileError:
            if count:
                raise
    return count, rate, channels, all_zero
