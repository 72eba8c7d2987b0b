"""Cut a clip's video down to the packets one window needs, without decoding them (issue 15).

DALI 2.4's ``decoders.video`` does not seek: asked for frames [s, s + n) it decodes every frame
before s as well (BENCHMARKS.md, "Input pipeline CPU cost"), so a window late in a long clip
costs as much as decoding the clip up to it. The DALI source therefore hands the decoder a new
WebM holding only the packets from the keyframe at or before s to the window's last frame
(demuxed and muxed again by PyAV, ~1-2 ms, no decode), and frame indices shifted by that
keyframe's index. The frames decoded are identical (tests/test_video_cut.py); the decode then
costs what the PyTorch loader's seeking decode costs: the window plus at most one keyframe
interval before it.
"""
from __future__ import annotations

import io

import av
import numpy as np

from xkd.data.frame_time import frame_clock, seek_to_frame


def cut_video(data: bytes, start: int, end: int, fps: int) -> tuple[bytes, int]:
    """The packets of frames [keyframe <= ``start``, ``end``) of a video, as a WebM, and the index
    of its first frame in the original video (the keyframe's).

    Frames are counted as in :mod:`xkd.data.frame_time`, as the PyTorch loader counts them. Where the cut cannot be trusted (start 0, a seek
    that lands after ``start`` or not on a keyframe, packets without timestamps) the whole video
    comes back with index 0, i.e. DALI decodes from the beginning as it would without the cut.
    Damaged containers raise (PyAV's error), as decoding them would.
    """
    if start <= 0:
        return data, 0
    output = io.BytesIO()
    with av.open(io.BytesIO(data)) as source:
        stream = source.streams.video[0]
        seek_to_frame(source, stream, start, fps)
        first, frame_index = None, frame_clock(stream, fps)
        # bitexact: no random segment UID or muxing date, so a row read twice is the same bytes.
        with av.open(output, "w", format="webm", container_options={"fflags": "+bitexact"}) as cut:
            cut_stream = cut.add_stream_from_template(stream)
            for packet in source.demux(stream):
                if packet.size == 0:  # the demuxer's flush packet at the end
                    continue
                if packet.pts is None or packet.dts is None:
                    return data, 0
                if first is None:
                    first = frame_index(packet.pts)
                    if first > start or not packet.is_keyframe:
                        return data, 0
                # Decode order: once a packet's decode time is past the window, so is every frame after it.
                if frame_index(packet.dts) >= end:
                    break
                packet.stream = cut_stream
                cut.mux(packet)
    if first is None:
        return data, 0
    return output.getvalue(), first


def cut_window(data: np.ndarray, frames: np.ndarray, fps: int) -> tuple[np.ndarray, np.ndarray]:
    """A source row's video bytes and window frame indices -> the cut video and the same frames'
    indices in it."""
    if int(frames.min()) <= 0:  # nothing before the window: no copy of the bytes, no demux
        return data, frames
    video, first = cut_video(data.tobytes(), int(frames.min()), int(frames.max()) + 1, fps)
    if first == 0:
        return data, frames
    return np.frombuffer(video, dtype=np.uint8), (frames - first).astype(frames.dtype)
