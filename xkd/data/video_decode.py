"""A window of a stored clip's frames, decoded with PyAV (docs/method.md §1.1).

Two outputs of the same seeking decode:

- :func:`decode_window` (the training loaders): the decoder's own YUV frames, left in its buffers
  for the loader to copy once into its batch; :func:`decode_planes` copies them into a window's
  own luma (T, 1, H, W) and chroma (T, 2, h, w) uint8 planes. Both come with the clip's YUV -> RGB
  matrix. The trainer cuts the views from the planes and converts them to RGB on its device (:mod:`xkd.data.video_crops`,
  :mod:`xkd.data.video_finish`): at 128 px, swscale's YUV -> RGB conversion costs 2-4x the VP9
  decode itself (BENCHMARKS.md, issue 15), and on the device it is one 3 x 3 matrix per view.
- :func:`decode_frames` (the evaluation suite): RGB (T, 3, H, W) uint8, converted by swscale.

Frame i is the frame shown i / fps after the stream's start (:mod:`xkd.data.frame_time`): the
decode opens the container without FFmpeg's probe decode (:func:`open_video`), seeks to the
keyframe at or before the window and decodes forward; a clip shorter than the window is padded by
repeating its last frame (DALI's pad_mode "edge"), and a window with frames missing inside the
video (damage the decoder skipped) is an error.
"""
from __future__ import annotations

import functools
import io
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple, TypeVar

import av
import numpy as np
import torch

from xkd.data.frame_time import frame_clock, seek_to_frame

# Planar 8-bit YUV as decoders output it; the "j" formats are full range. Another pixel format
# (an RGB codec, 10-bit video) is converted to YUV_FALLBACK by swscale first.
PLANAR_YUV = ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p")
YUV_FALLBACK = "yuv444p"  # no chroma subsampling: only the conversion rounds
# (Kr, Kb) luma weights of the YUV matrices, by the stream's colour-space tag (FFmpeg's AVColorSpace);
# untagged and other streams are BT.601, as swscale and FFmpeg assume.
LUMA_WEIGHTS = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "fcc": (0.30, 0.11),
                "smpte240m": (0.212, 0.087), "bt2020": (0.2627, 0.0593)}
COLORSPACE_TAGS = {1: "bt709", 4: "fcc", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
# Maps RGB uint8 views to [0, 1] (decoders that output RGB: DALI's, NVDEC).
RGB_TO_RGB = np.array([[1 / 255, 0, 0, 0], [0, 1 / 255, 0, 0], [0, 0, 1 / 255, 0]], dtype=np.float32)

Frame = TypeVar("Frame")

# Opening a container, FFmpeg's probe (avformat_find_stream_info) decodes each stream's first frame
# to learn what the container does not say (the pixel format): for a window that is a second decode
# of its first keyframe, ~0.45 ms of a ~5.5 ms window (BENCHMARKS.md, issue 15). With no decoder on
# the container's whitelist the probe decodes nothing (with FFmpeg's log on it says so: "not on
# whitelist"); the stream's own decoder, which PyAV opens itself, is not bound by that list and
# decodes the same frames (tests/test_video_decode.py).
NO_PROBE_DECODE = {"codec_whitelist": "none"}
SHARD_CONTAINER = "matroska"  # make_shards writes WebM, a Matroska profile (xkd.data.format)


def open_video(data: bytes) -> av.container.InputContainer:
    """``data`` opened for demuxing and decoding, without the probe's decode where the container
    gives the video stream's first timestamp by itself (WebM/Matroska with VP8, VP9, mjpeg). H.264
    learns it only from the probe's decode (its timestamps need the frames' reordering): such a
    video is opened again with the probe, so frame indices (:mod:`xkd.data.frame_time`) do not move.
    The streams' codec parameters are the container's (no pixel format; colour tags only where the
    container has them): read colours from decoded frames."""
    try:  # the shards' container named: FFmpeg's format probe is ~0.07 ms of a window
        container = av.open(io.BytesIO(data), format=SHARD_CONTAINER, container_options=NO_PROBE_DECODE)
    except av.error.InvalidDataError:  # another container (the evaluation's clips), or damaged data
        container = av.open(io.BytesIO(data), container_options=NO_PROBE_DECODE)
    if container.streams.video and container.streams.video[0].start_time is None:
        container.close()
        return av.open(io.BytesIO(data))
    return container


def yuv_to_rgb_matrix(standard: str, full_range: bool) -> np.ndarray:
    """(3, 4) float32 affine map from (Y, U, V, 1), each in [0, 255], to (R, G, B) in [0, 1]
    (:func:`_yuv_to_rgb_matrix`'s, each made once: a loader asks for one per window)."""
    return _yuv_to_rgb_matrix(standard, full_range).copy()


@functools.lru_cache(maxsize=None)
def _yuv_to_rgb_matrix(standard: str, full_range: bool) -> np.ndarray:
    """(3, 4) float32 affine map from (Y, U, V, 1), each in [0, 255], to (R, G, B) in [0, 1].

    With luma weights (Kr, Kb), Kg = 1 - Kr - Kb, and Y', Cb', Cr' the levels scaled to [0, 1]
    and [-1/2, 1/2] (limited range: Y in [16, 235], U and V in [16, 240]):
    R = Y' + 2 (1 - Kr) Cr', G = Y' - 2 Kb (1 - Kb) / Kg Cb' - 2 Kr (1 - Kr) / Kg Cr', B = Y' + 2 (1 - Kb) Cb'.
    """
    kr, kb = LUMA_WEIGHTS[standard]
    kg = 1 - kr - kb
    luma_scale, chroma_scale, luma_zero = (1 / 255, 1 / 255, 0.0) if full_range else (1 / 219, 1 / 224, 16.0)
    # Rows: (R, G, B); columns: the weight of Y', Cb', Cr' before scaling.
    weights = np.array([[1.0, 0.0, 2 * (1 - kr)],
                        [1.0, -2 * kb * (1 - kb) / kg, -2 * kr * (1 - kr) / kg],
                        [1.0, 2 * (1 - kb), 0.0]])
    linear = weights * np.array([luma_scale, chroma_scale, chroma_scale])
    offset = -linear @ np.array([luma_zero, 128.0, 128.0])
    return np.concatenate([linear, offset[:, None]], axis=1).astype(np.float32)


def colour_standard(colorspace_tag: int) -> str:
    """The ``LUMA_WEIGHTS`` key of an FFmpeg colour-space tag (frame or stream ``colorspace``)."""
    return COLORSPACE_TAGS.get(int(colorspace_tag), "bt601")


def frame_yuv_matrix(frame: av.VideoFrame) -> np.ndarray:
    """The YUV -> RGB matrix of a decoded planar YUV frame: the weights of its colour-space tag
    (BT.601 when untagged); full range for the "j" formats and frames tagged JPEG range."""
    full_range = frame.format.name.startswith("yuvj") or frame.color_range == 2  # AVCOL_RANGE_JPEG
    return yuv_to_rgb_matrix(colour_standard(frame.colorspace), full_range)


def stream_colour_standard(data: bytes) -> str:
    """The colour standard a video's container declares for its stream, without decoding: make_shards'
    ffmpeg writes the same tags into the container and the bitstream. (A stream tagged only in its
    bitstream reads as BT.601 here, where the PyAV decode reads the frames' tags.)"""
    with open_video(data) as container:
        return colour_standard(container.streams.video[0].codec_context.colorspace)


def bt601_rgb_matrix(standard: str) -> np.ndarray:
    """(3, 4) map from RGB uint8 that a decoder converted with BT.601 studio-swing weights whatever
    the stream's tag (DALI's CPU decoder and NVDEC) to RGB in [0, 1] with ``standard``'s weights:
    back to YUV, then forward with the right matrix (exact where the decoder did not clip)."""
    if standard == "bt601":
        return RGB_TO_RGB
    decoded = np.vstack([yuv_to_rgb_matrix("bt601", full_range=False).astype(np.float64), [0, 0, 0, 1]])
    from_rgb255 = np.linalg.inv(decoded) @ np.diag([1 / 255, 1 / 255, 1 / 255, 1.0])
    return (yuv_to_rgb_matrix(standard, full_range=False).astype(np.float64) @ from_rgb255).astype(np.float32)


# Decoders kept per thread (a loader's reader thread or worker process) and reused window after
# window: opening a VP9 decoder is ~0.2 ms of a ~5 ms window (BENCHMARKS.md, issue 15). Only VP9
# (make_shards' default) and VP8, and only without extradata: all their decoders need is in their
# packets, and what the container says of colour is copied in at each use, as FFmpeg copies it when it
# opens a stream's own decoder (the bitstream's own tags then win, in both). Any other stream decodes
# with its own: mjpeg's decoder, for one, sets its colour tags once, when it opens.
REUSABLE_DECODERS = ("vp9", "vp8")
COLOUR_TAGS = ("colorspace", "color_range", "color_primaries", "color_trc")
_reused = threading.local()


def _reused_decoder(stream: av.video.stream.VideoStream) -> av.CodecContext | None:
    """This thread's decoder for ``stream``'s codec, reset and tagged like the stream, or None."""
    own = stream.codec_context
    if own.name not in REUSABLE_DECODERS or own.extradata:
        return None
    decoder = _reused.__dict__.get(own.name)
    if decoder is None:
        decoder = _reused.__dict__[own.name] = av.CodecContext.create(own.name, "r")
        decoder.thread_count = 1
    else:
        decoder.flush_buffers()  # the last window's references and end-of-stream state
    for tag in COLOUR_TAGS:
        setattr(decoder, tag, getattr(own, tag))
    return decoder


def _decoded(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
    """The frames of ``stream`` from the container's position on."""
    decoder = _reused_decoder(stream)
    if decoder is None:
        yield from container.decode(stream)
        return
    for packet in container.demux(stream):
        yield from decoder.decode(packet)  # the demuxer's last, empty packet drains the decoder


def _decode_window(data: bytes, start: int, count: int, fps: int, convert: Callable[[av.VideoFrame], Frame],
                   stored_frames: int | None, seek: bool = True) -> list[Frame]:
    """``convert`` of each frame of [start, start + count) that the video has (fewer at its end)."""
    frames, first = [], None
    with open_video(data) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1  # the loaders parallelise over clips; codec threads only oversubscribe
        if seek and start > 0:
            seek_to_frame(container, stream, start, fps)
        index, frame_index = -1, frame_clock(stream, fps)
        for frame in _decoded(container, stream):
            index = index + 1 if frame.pts is None else frame_index(frame.pts)
            first = index if first is None else first
            if seek and first > start:  # the seek overshot: decode from the beginning instead
                break
            # Before the window, or a second frame at an index (a stream above ``fps``): the first one stays.
            if index < start + len(frames):
                continue
            if index > start + len(frames):
                # Frames lost to damage, the decoder going on from the next keyframe: the window would
                # splice two moments of the clip together.
                raise ValueError(f"frame {start + len(frames)} of the window is missing (the video goes on with "
                                 f"frame {index})")
            frames.append(convert(frame))
            if len(frames) == count:
                break
    if seek and first is not None and first > start:
        return _decode_window(data, start, count, fps, convert, stored_frames, seek=False)
    if not frames:
        raise ValueError(f"no frames decoded at or after frame {start}")
    if stored_frames is not None and len(frames) < min(count, stored_frames - start):
        raise ValueError(f"video ends after frame {start + len(frames) - 1}, its info vector says {stored_frames} "
                         "frames")
    return frames


def _pad(frames: torch.Tensor, count: int) -> torch.Tensor:
    """Repeat the last frame up to ``count`` frames."""
    if len(frames) >= count:
        return frames
    return torch.cat([frames, frames[-1:].expand(count - len(frames), *frames.shape[1:])])


def decode_frames(data: bytes, start: int, count: int, fps: int, stored_frames: int | None = None) -> torch.Tensor:
    """Frames [start, start + count) of a video as RGB uint8 (count, 3, H, W).

    With ``stored_frames`` (the sample's info vector), a video that ends before the frames it
    claims to have is corrupt (``ValueError``)."""
    frames = _decode_window(data, start, count, fps, lambda f: torch.from_numpy(f.to_ndarray(format="rgb24")),
                            stored_frames)
    return _pad(torch.stack(frames).permute(0, 3, 1, 2), count)


class YuvWindow(NamedTuple):
    """Decoded frames as planes: ``planes`` = (luma (T, 1, H, W), chroma (T, 2, h, w)), uint8, and
    ``to_rgb``, the (3, 4) matrix of :func:`yuv_to_rgb_matrix` that turns them into RGB."""
    planes: tuple[torch.Tensor, torch.Tensor]
    to_rgb: np.ndarray


def _plane_array(plane) -> np.ndarray:
    """A frame plane's pixels (H, W) as a view of the decoder's buffer (its rows are ``line_size`` apart)."""
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]


class DecodedWindow(NamedTuple):
    """A window's frames as the decoder left them, not yet copied: planar 8-bit YUV frames, each
    holding its own reference to its buffers (the decoder may be gone), up to ``count`` of them
    (fewer at the end of a short clip: the last one stands for the rest), and the (3, 4) YUV -> RGB
    matrix of the first (a stream's frames share theirs).

    The loaders copy the frames once, straight into their batch's padded planes, not into a window's
    own arrays first: the DALI loader's readers into the batch's shared memory
    (:func:`xkd.data.batch_memory.write_clip`), the PyTorch loader's collation
    (:func:`xkd.data.video_crops.pad_windows`)."""
    frames: list[av.VideoFrame]
    count: int
    to_rgb: np.ndarray

    def plane_sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(height, width) of the luma and of the chroma planes."""
        luma, chroma = self.frames[0].planes[:2]
        return (luma.height, luma.width), (chroma.height, chroma.width)

    def planes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The window copied into its own luma (count, 1, H, W) and chroma (count, 2, h, w) uint8 planes."""
        (height, width), (chroma_height, chroma_width) = self.plane_sizes()
        luma = np.empty((self.count, 1, height, width), dtype=np.uint8)
        chroma = np.empty((self.count, 2, chroma_height, chroma_width), dtype=np.uint8)
        self.copy_into(luma, chroma)
        return torch.from_numpy(luma), torch.from_numpy(chroma)

    def copy_into(self, luma: np.ndarray, chroma: np.ndarray) -> None:
        """The window into the top-left corners of ``luma`` (count, 1, >= H, >= W) and ``chroma``
        (count, 2, >= h, >= w), uint8; frames past the clip's end repeat its last frame."""
        for i, frame in enumerate(self.frames):
            y, u, v = (_plane_array(plane) for plane in frame.planes[:3])
            luma[i, 0, :y.shape[0], :y.shape[1]] = y
            chroma[i, 0, :u.shape[0], :u.shape[1]] = u
            chroma[i, 1, :v.shape[0], :v.shape[1]] = v
        last = len(self.frames) - 1
        if last + 1 < self.count:
            (height, width), (chroma_height, chroma_width) = self.plane_sizes()
            luma[last + 1:self.count, :, :height, :width] = luma[last, :, :height, :width]
            chroma[last + 1:self.count, :, :chroma_height, :chroma_width] = chroma[last, :, :chroma_height, :chroma_width]


def decode_window(data: bytes, start: int, count: int, fps: int, stored_frames: int | None = None) -> DecodedWindow:
    """Frames [start, start + count) of a video, decoded (planar YUV; another pixel format converted
    to ``YUV_FALLBACK``) but not copied out of the decoder's buffers. With ``stored_frames`` (the
    sample's info vector), a video that ends before the frames it claims to have is corrupt
    (``ValueError``)."""
    frames = _decode_window(data, start, count, fps, lambda frame: frame, stored_frames)
    if frames[0].format.name not in PLANAR_YUV:
        frames = [frame.reformat(format=YUV_FALLBACK, dst_colorspace="ITU601", dst_color_range="JPEG")
                  for frame in frames]
    return DecodedWindow(frames, count, frame_yuv_matrix(frames[0]))


def decode_planes(data: bytes, start: int, count: int, fps: int, stored_frames: int | None = None) -> YuvWindow:
    """Frames [start, start + count) of a video as YUV planes (no RGB conversion on the host), padded
    like :func:`decode_frames`: :func:`decode_window`, copied into the window's own arrays."""
    window = decode_window(data, start, count, fps, stored_frames)
    return YuvWindow(window.planes(), window.to_rgb)
