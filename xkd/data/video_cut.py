"""Cut a clip's video down to the packets one window needs, without decoding them (issue 15).

DALI 2.4's ``decoders.video`` does not seek: asked for frames [s, s + n) it decodes every frame
before s as well (BENCHMARKS.md, "Input pipeline CPU cost"), so a window late in a long clip
costs as much as decoding the clip up to it. The DALI source therefore hands the decoder a new
WebM (Matroska for mjpeg) holding only the packets from the keyframe at or before s to
the window's last frame (demuxed and muxed again by PyAV, no decode), and frame indices shifted by
that keyframe's index. The frames decoded are identical (tests/test_video_cut.py); the decode
then costs what the PyTorch loader's seeking decode costs: the window plus at most one keyframe
interval before it. The demux also checks that every frame of the window has its packet, as the
PyAV decode checks its frames, so both decoders reject the same damaged windows (VP8, VP9, mjpeg:
an H.264 video goes to DALI whole and unchecked, its packets having no decode times after a seek).
"""
from __future__ import annotations

import io

import av
import numpy as np

from xkd.data.frame_time import frame_clock, seek_to_frame
from xkd.data.transcode import CONTAINERS
from xkd.data.video_decode import open_video


def window_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: int,
                   end: int, fps: int) -> tuple[list[av.Packet], int] | None:
    """The packets a decoder needs for frames [``start``, ``end``): from the keyframe at or before
    ``start`` (seeking there) up to the window's last frame, and that keyframe's frame index.

    None where they cannot be trusted (a seek that lands after ``start`` or not on a keyframe,
    packets without timestamps: H.264's carry no decode time after a seek), and then nothing is
    checked. Otherwise a frame of the window without a packet (damage the demuxer skipped; a
    video shorter than the window) is a ``ValueError``, as in the PyAV decode
    (:mod:`xkd.data.video_decode`): DALI's decoder would go on from the next keyframe and splice
    two moments of the clip into one window."""
    if start > 0:
        seek_to_frame(container, stream, start, fps)
    frame_index = frame_clock(stream, fps)
    packets: list[av.Packet] = []
    shown: set[int] = set()
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's flush packet at the end
            continue
        if packet.pts is None or packet.dts is None:
            return None
        frame = frame_index(packet.pts)
        if not packets and (frame > start or not packet.is_keyframe):
            return None
        # Decode order: once a packet's decode time is past the window, so is every frame after it.
        if frame_index(packet.dts) >= end:
            break
        packets.append(packet)
        shown.add(frame)
    missing = [frame for frame in range(start, end) if frame not in shown]
    if missing:
        raise ValueError(f"frame {missing[0]} of the window is missing (no packet shows it)")
    return packets, frame_index(packets[0].pts)


def cut_video(data: bytes, start: int, end: int, fps: int) -> tuple[bytes, int]:
    """The packets of frames [keyframe <= ``start``, ``end``) of a video, in the container make_shards
    writes for its codec (WebM for VP8/VP9, Matroska for the others), and the index of its first
    frame in the original video (the keyframe's).

    Frames are counted as in :mod:`xkd.data.frame_time`, as the PyTorch loader counts them. Where
    the cut cannot be trusted (see :func:`window_packets`) or starts at frame 0, the whole video
    comes back with index 0, i.e. DALI decodes from the beginning as it would without the cut.
    Damaged containers raise (PyAV's error), as decoding them would, and so do windows with frames
    missing.
    """
    with open_video(data) as source:  # demuxed only: no probe decode
        stream = source.streams.video[0]
        window = window_packets(source, stream, start, end, fps)
        if window is None or window[1] == 0:
            return data, 0
        packets, first = window
        output = io.BytesIO()
        # bitexact: no random segment UID or muxing date, so a row read twice is the same bytes.
        # WebM takes VP8/VP9 (and AV1) only; the codec's own name, not its decoder's (libvpx-vp9...).
        muxer = CONTAINERS.get(stream.codec_context.codec.canonical_name, "matroska")
        with av.open(output, "w", format=muxer, container_options={"fflags": "+bitexact"}) as cut:
            cut_stream = cut.add_stream_from_template(stream)
            for packet in packets:
                packet.stream = cut_stream
                cut.mux(packet)
    return output.getvalue(), first


def cut_window(data: np.ndarray, frames: np.ndarray, fps: int) -> tuple[np.ndarray, np.ndarray]:
    """A source row's video bytes and window frame indices -> the cut video and the same frames'
    indices in it."""
    video, first = cut_video(data.tobytes(), int(frames.min()), int(frames.max()) + 1, fps)
    if first == 0:
        return data, frames
    return np.frombuffer(video, dtype=np.uint8), (frames - first).astype(frames.dtype)
