"""Frame indices <-> PyAV stream timestamps at a clip's fixed frame rate.

Frame i of a stored clip is the one shown i / fps after the stream's start (its first
timestamp, not 0: containers may start late). The PyTorch loader's seeking decode and the DALI
source's window cut both count frames this way, so they agree on which frames a window holds.
"""
from __future__ import annotations

from fractions import Fraction

import av


def frame_index(stream: av.video.stream.VideoStream, timestamp: int, fps: int) -> int:
    """The frame index of a packet's or frame's ``timestamp`` (pts or dts, in ``stream.time_base``)."""
    return round((timestamp - (stream.start_time or 0)) * stream.time_base * fps)


def seek_to_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream, frame: int,
                  fps: int) -> None:
    """Seek ``container`` to the keyframe at or before ``frame`` (the demuxer may land earlier or,
    on some containers, later: callers check the first timestamp they get)."""
    container.seek((stream.start_time or 0) + int(Fraction(frame, fps) / stream.time_base), stream=stream,
                   backward=True)
