"""Why an input was not packed: the ``reason`` values of ``skipped.jsonl``.

Every input ends up either as one sample in a shard or as one line
``{"source": ..., "reason": ..., "detail": ...}`` in ``skipped.jsonl``, so
``manifest num_samples + skipped lines == inputs``.
"""
from __future__ import annotations

from dataclasses import dataclass

MISSING_FILE = "missing_file"  # a CSV row whose file is not under --media-root; a dangling symlink
OUTSIDE_MEDIA_ROOT = "outside_media_root"  # a CSV row whose path leads out of --media-root ("..", absolute)
SYMLINK_LOOP = "symlink_loop"  # a symlink that never reaches a file (points to itself or round in a circle)
DUPLICATE = "duplicate"  # the same file listed twice (CSV inputs); the first one is packed
EMPTY_FILE = "empty_file"  # zero bytes
NOT_MEDIA = "not_media"  # text or other data that no demuxer recognises; not a regular file (fifo, socket)
UNSUPPORTED_CONTAINER = "unsupported_container"  # recognised, but an image / subtitle / text format
CORRUPT = "corrupt"  # the container or its streams cannot be read
TRUNCATED = "truncated"  # the file ends early (incomplete download or copy)
NO_VIDEO = "no_video_stream"  # audio-only and similar
NO_AUDIO = "no_audio_stream"  # --no-audio-policy skip
TOO_SHORT = "too_short"  # shorter than --min-duration with --short-policy skip
TRANSCODE_FAILED = "transcode_failed"  # ffmpeg exited with an error
NO_FRAMES = "no_frames"  # the transcoded video has no frame

ALL_REASONS = (
    MISSING_FILE, OUTSIDE_MEDIA_ROOT, SYMLINK_LOOP, DUPLICATE, EMPTY_FILE, NOT_MEDIA, UNSUPPORTED_CONTAINER,
    CORRUPT, TRUNCATED, NO_VIDEO, NO_AUDIO, TOO_SHORT, TRANSCODE_FAILED, NO_FRAMES,
)


@dataclass(frozen=True)
class SkipRecord:
    """One line of ``skipped.jsonl``."""

    source: str
    reason: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason, "detail": self.detail}


class ClipSkipped(Exception):
    """Raised while preparing a clip that cannot (or by policy must not) be packed."""

    def __init__(self, reason: str, detail: str):
        if reason not in ALL_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {ALL_REASONS}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
