"""Frame indices <-> PyAV stream timestamps at a clip's fixed frame rate.

Frame i of a stored clip is the one shown i / fps after the stream's start (its first
timestamp, not 0: containers may start late). The PyTorch loader's seeking decode and the DALI
source's window cut both count frames this way, so they agree on which frames a window holds.
"""
from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import av


def frame_clock(stream: av.video.stream.VideoStream, fps: int) -> Callable[[int], int]:
    """:func:`frame_index` for one stream: its start and time base read once, the index in integer
    arithmetic (PyAV builds a new Fraction per ``time_base`` read, and Fraction arithmetic per
    decoded frame cost ~0.4 ms of a 32-frame window; BENCHMARKS.md, issue 15)."""
    start = stream.start_time or 0
    scale = stream.time_base * fps
    numerator, denominator = scale.numerator, scale.denominator

    def index(timestamp: int) -> int:
        quotient, remainder = divmod((timestamp - start) * numerator, denominator)
        # Half way: to the even neighbour, as round() of the exact Fraction does.
        if 2 * remainder > denominator or (2 * remainder == denominator and quotient % 2):
            quotient += 1
        return quotient
    return index


def frame_index(stream: av.video.stream.VideoStream, timestamp: int, fps: int) -> int:
    """The frame index of a packet's or frame's ``timestamp`` (pts or dts, in ``stream.time_base``):
    round((timestamp - start) * time_base * fps)."""
    return frame_clock(stream, fps)(timestamp)


def seek_to_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream, frame: int,
                  fps: int) -> None:
    """Seek ``container`` to the keyframe at or before ``frame`` (the demuxer may land earlier or,
    on some containers, later: callers check the first timestamp they get)."""
    container.seek((stream.start_time or 0) + int(Fraction(frame, fps) / stream.time_base), stream=stream,
                   backward=True)
