"""One input clip -> one sample (video file, FLAC file, json bytes, npy bytes), or a skip record.

This runs in the worker processes. It probes the source, applies the duration / no-audio
policies, transcodes with ffmpeg into a private work folder, then measures the outputs
(frame count from the demuxed packets, sample count by decoding the FLAC).
"""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xkd.data import format as fmt
from xkd.data import skip_reasons as sr
from xkd.data.inputs import InputItem
from xkd.data.probe import SourceInfo, count_audio_samples, probe_source, probe_video_output
from xkd.data.transcode import CONTAINERS, TranscodeSettings, clip_command, run_ffmpeg, silence_command

SHORT_POLICIES = ("skip", "pad")
NO_AUDIO_POLICIES = ("skip", "silence")
NO_VIDEO_POLICIES = ("skip", "audio-only")
# A transcode that yields less than this share of the probed duration (minus a slack) was cut short.
TRUNCATED_SHARE = 0.75
TRUNCATED_SLACK_S = 0.5


@dataclass(frozen=True)
class ClipPolicy:
    """What to do with clips that are short or have no audio stream."""

    min_duration: float = 4.0
    short_policy: str = "skip"  # "pad": keep, json "padded": true; loaders loop / pad
    no_audio_policy: str = "skip"  # "silence": keep with a silent FLAC, json "has_audio": false
    # "audio-only": keep sources without a video stream as samples without .webm (audio datasets:
    # ESC-50, FSD50K), json "has_video": false; see xkd/data/format.py.
    no_video_policy: str = "skip"

    def __post_init__(self) -> None:
        if self.short_policy not in SHORT_POLICIES:
            raise ValueError(f"short policy {self.short_policy!r}: expected one of {SHORT_POLICIES}")
        if self.no_audio_policy not in NO_AUDIO_POLICIES:
            raise ValueError(f"no-audio policy {self.no_audio_policy!r}: expected one of {NO_AUDIO_POLICIES}")
        if self.no_video_policy not in NO_VIDEO_POLICIES:
            raise ValueError(f"no-video policy {self.no_video_policy!r}: expected one of {NO_VIDEO_POLICIES}")
        if self.min_duration < 0:
            raise ValueError(f"min duration {self.min_duration}: expected >= 0 seconds")


@dataclass(frozen=True)
class PreparedSample:
    """A finished sample: the two media files in the work folder plus the small members."""

    key: str
    source: str
    video_file: Path | None  # None: an audio-only sample
    audio_file: Path
    meta: bytes
    info: bytes
    workdir: Path

    def members(self) -> list[tuple[str, Path | bytes]]:
        """(extension, file or bytes) in ``format.SAMPLE_EXTS`` order (no video for audio-only samples)."""
        by_ext = {fmt.VIDEO_EXT: self.video_file, fmt.AUDIO_EXT: self.audio_file,
                  fmt.META_EXT: self.meta, fmt.INFO_EXT: self.info}
        return [(ext, by_ext[ext]) for ext in fmt.SAMPLE_EXTS if by_ext[ext] is not None]

    def discard(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def info_vector(values: dict[str, int]) -> bytes:
    """The ``<key>.npy`` bytes: int64 vector in ``format.SAMPLE_INFO_FIELDS`` order (np.save format)."""
    missing = [name for name in fmt.SAMPLE_INFO_FIELDS if name not in values]
    if missing:
        raise KeyError(f"sample info fields {missing} of format.SAMPLE_INFO_FIELDS have no value")
    buffer = io.BytesIO()
    np.save(buffer, np.array([values[name] for name in fmt.SAMPLE_INFO_FIELDS], dtype=np.int64),
            allow_pickle=False)
    return buffer.getvalue()


def _check_duration(duration: float | None, policy: ClipPolicy, source: Path) -> bool:
    """True when the clip is short and kept as padded; raises when short and skipped."""
    if duration is None or duration >= policy.min_duration:
        return False
    if policy.short_policy == "skip":
        raise sr.ClipSkipped(sr.TOO_SHORT, f"{source}: {duration:.3f} s < --min-duration {policy.min_duration} s")
    return True


def _check_truncation(stderr: str, info: SourceInfo, seconds: float, source: Path) -> None:
    """The demuxer hit the end of the file early, or the video decodes much shorter than its
    stream header says (compared with the video stream's own duration, not the container's,
    which may include a longer audio track)."""
    announced = info.video.duration
    if "partial file" in stderr:
        raise sr.ClipSkipped(sr.TRUNCATED, f"{source}: the demuxer reports a partial file "
                             f"(decoded {seconds:.2f} s of {announced or info.duration or 0:.2f} s)")
    if announced and seconds < TRUNCATED_SHARE * announced - TRUNCATED_SLACK_S:
        raise sr.ClipSkipped(sr.TRUNCATED, f"{source}: decoded only {seconds:.2f} s of the "
                             f"{announced:.2f} s its video stream announces")


def prepare_clip(item: InputItem, label_index: dict[str, int], settings: TranscodeSettings,
                 policy: ClipPolicy, workdir: Path) -> PreparedSample | sr.SkipRecord:
    """Transcode one input into ``workdir`` (created, removed on skip). Never raises for bad input."""
    try:
        return _prepare(item, label_index, settings, policy, workdir)
    except sr.ClipSkipped as skip:
        shutil.rmtree(workdir, ignore_errors=True)
        return sr.SkipRecord(item.source, skip.reason, skip.detail)
    except Exception as err:  # noqa: BLE001 - bad input must never stop the run; record what happened
        shutil.rmtree(workdir, ignore_errors=True)
        return sr.SkipRecord(item.source, sr.TRANSCODE_FAILED, f"{item.path}: {type(err).__name__}: {err}")


def _prepare(item: InputItem, label_index: dict[str, int], settings: TranscodeSettings,
             policy: ClipPolicy, workdir: Path) -> PreparedSample:
    if item.path is None:
        raise sr.ClipSkipped(item.reason, item.missing or f"{item.source}: no such file")
    source = item.path
    info = probe_source(source, allow_audio_only=policy.no_video_policy == "audio-only")
    if info.video is None:
        return _prepare_audio_only(item, label_index, settings, policy, workdir, info)
    padded = _check_duration(info.duration, policy, source)
    if info.audio is None and policy.no_audio_policy == "skip":
        raise sr.ClipSkipped(sr.NO_AUDIO, f"{source}: no audio stream (--no-audio-policy skip)")

    workdir.mkdir(parents=True, exist_ok=True)
    key = fmt.sample_key(item.source)
    video_file, audio_file = workdir / f"{key}.{fmt.VIDEO_EXT}", workdir / f"{key}.{fmt.AUDIO_EXT}"
    stderr = run_ffmpeg(clip_command(source, info, settings, video_file,
                                     audio_file if info.audio is not None else None), source)
    video = probe_video_output(video_file)
    if video.num_frames == 0:
        raise sr.ClipSkipped(sr.NO_FRAMES, f"{source}: the transcoded video has no frame ({stderr.strip()[-200:]})")
    seconds = video.num_frames / settings.fps
    _check_truncation(stderr, info, seconds, source)
    if info.duration is None:
        padded = _check_duration(seconds, policy, source)

    has_audio, audio_note = info.audio is not None, ""
    if has_audio:
        num_samples, rate, channels, all_zero = count_audio_samples(audio_file)
        if num_samples == 0:
            if policy.no_audio_policy == "skip":
                raise sr.ClipSkipped(sr.NO_AUDIO, f"{source}: the audio stream decodes to no samples")
            has_audio, audio_note = False, "audio stream decodes to no samples"
    if not has_audio:
        run_ffmpeg(silence_command(seconds, settings, audio_file), source)
        num_samples, rate, channels, all_zero = count_audio_samples(audio_file)
    if rate != settings.audio_rate or channels != 1:
        raise sr.ClipSkipped(sr.TRANSCODE_FAILED, f"{source}: audio came out {rate} Hz x{channels}, "
                             f"expected {settings.audio_rate} Hz mono")

    label = item.labels[0] if item.labels else None
    index = label_index.get(label, fmt.NO_LABEL) if label is not None else fmt.NO_LABEL
    meta = {
        "format_version": fmt.FORMAT_VERSION,
        "key": key,
        "source": item.source,
        "label": label,
        "labels": list(item.labels),
        "label_index": index,
        "label_indices": [label_index[lab] for lab in item.labels if lab in label_index],
        "duration": round(seconds, 6),
        "num_frames": video.num_frames,
        "fps": settings.fps,
        "width": video.width,
        "height": video.height,
        "video_codec": video.codec,
        "video_container": CONTAINERS[settings.video_codec],
        "num_audio_samples": num_samples,
        "audio_rate": rate,
        "audio_channels": channels,
        "audio_duration": round(num_samples / rate, 6),
        "has_audio": has_audio,
        "audio_all_zero": all_zero,
        "padded": padded,
        "min_duration": policy.min_duration,
        "source_container": info.container,
        "source_duration": round(info.duration, 6) if info.duration else None,
        "source_video_codec": info.video.codec,
        "source_width": info.video.width,
        "source_height": info.video.height,
        "source_display_width": info.video.display_width,
        "source_display_height": info.video.display_height,
        "source_fps": round(info.video.fps, 6) if info.video.fps else None,
        "source_audio_codec": info.audio.codec if info.audio else None,
        "source_sample_rate": info.audio.sample_rate if info.audio else None,
        "source_channels": info.audio.channels if info.audio else None,
    }
    if audio_note:
        meta["audio_note"] = audio_note
    info_values = {"num_frames": video.num_frames, "num_audio_samples": num_samples, "label_index": index,
                   "has_audio": int(has_audio), "width": video.width, "height": video.height}
    return PreparedSample(
        key=key, source=item.source, video_file=video_file, audio_file=audio_file,
        meta=json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"),
        info=info_vector(info_values), workdir=workdir)


def _prepare_audio_only(item: InputItem, label_index: dict[str, int], settings: TranscodeSettings,
                        policy: ClipPolicy, workdir: Path, info: SourceInfo) -> PreparedSample:
    """An audio-only source (``--no-video-policy audio-only``): FLAC + json + npy, no video member;
    num_frames, width and height are 0 and json ``has_video`` is false. The duration policy
    applies to the audio; a source whose audio decodes to no samples is skipped (``no_audio_stream``)."""
    source = item.path
    padded = _check_duration(info.duration, policy, source)
    workdir.mkdir(parents=True, exist_ok=True)
    key = fmt.sample_key(item.source)
    audio_file = workdir / f"{key}.{fmt.AUDIO_EXT}"
    stderr = run_ffmpeg(clip_command(source, info, settings, None, audio_file), source)
    num_samples, rate, channels, all_zero = count_audio_samples(audio_file)
    if num_samples == 0:
        raise sr.ClipSkipped(sr.NO_AUDIO, f"{source}: the audio stream decodes to no samples")
    seconds = num_samples / rate
    announced = info.audio.duration if info.audio else None
    if "partial file" in stderr or (announced and seconds < TRUNCATED_SHARE * announced - TRUNCATED_SLACK_S):
        raise sr.ClipSkipped(sr.TRUNCATED, f"{source}: decoded only {seconds:.2f} s of audio "
                             f"(the stream announces {announced or 0:.2f} s)")
    if info.duration is None:
        padded = _check_duration(seconds, policy, source)
    if rate != settings.audio_rate or channels != 1:
        raise sr.ClipSkipped(sr.TRANSCODE_FAILED, f"{source}: audio came out {rate} Hz x{channels}, "
                             f"expected {settings.audio_rate} Hz mono")
    label = item.labels[0] if item.labels else None
    index = label_index.get(label, fmt.NO_LABEL) if label is not None else fmt.NO_LABEL
    meta = {
        "format_version": fmt.FORMAT_VERSION, "key": key, "source": item.source, "label": label,
        "labels": list(item.labels), "label_index": index,
        "label_indices": [label_index[lab] for lab in item.labels if lab in label_index],
        "duration": round(seconds, 6), "num_frames": 0, "fps": settings.fps, "width": 0, "height": 0,
        "has_video": False, "num_audio_samples": num_samples, "audio_rate": rate, "audio_channels": channels,
        "audio_duration": round(seconds, 6), "has_audio": True, "audio_all_zero": all_zero, "padded": padded,
        "min_duration": policy.min_duration, "source_container": info.container,
        "source_duration": round(info.duration, 6) if info.duration else None,
        "source_audio_codec": info.audio.codec if info.audio else None,
        "source_sample_rate": info.audio.sample_rate if info.audio else None,
        "source_channels": info.audio.channels if info.audio else None,
    }
    info_values = {"num_frames": 0, "num_audio_samples": num_samples, "label_index": index, "has_audio": 1,
                   "width": 0, "height": 0}
    return PreparedSample(
        key=key, source=item.source, video_file=None, audio_file=audio_file,
        meta=json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"),
        info=info_vector(info_values), workdir=workdir)
