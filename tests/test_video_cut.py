"""The DALI source's video cut (xkd.data.video_cut): DALI decodes exactly the frames it would decode
from the whole video, from a stream that starts at the window's keyframe."""
from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def

from media import RAMP, VP9, ffmpeg, full_decode, without_packets
from xkd.data.dali_pipeline import window_frames
from xkd.data.format import NUM_FRAMES, VIDEO_EXT
from xkd.data.sample_check import read_info
from xkd.data.shard_index import index_split
from xkd.data.video_cut import cut_video, cut_window

FPS = 8


def dali_frames(video: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """DALI's CPU decode of ``frames`` of ``video`` (F, H, W, 3), as the production graph calls it."""
    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def decode():
        data = fn.external_source(source=lambda: [video], batch=True)
        indices = fn.external_source(source=lambda: [frames], batch=True)
        return fn.decoders.video(data, device="cpu", frames=indices, pad_mode="none")

    pipeline = decode()
    pipeline.build()
    return np.asarray(pipeline.run()[0].as_array()[0])


def first_packet_is_keyframe(video: bytes) -> bool:
    with av.open(io.BytesIO(video)) as container:
        return next(p for p in container.demux(video=0) if p.size).is_keyframe


@pytest.fixture(scope="module")
def longest_clip(sample_shards):
    ref = max(index_split(str(sample_shards)), key=lambda r: int(read_info(r)[NUM_FRAMES]))
    gop = json.loads((sample_shards / "manifest.json").read_text())["video"]["keyframe_interval"]
    return np.frombuffer(ref.read(VIDEO_EXT), dtype=np.uint8), int(read_info(ref)[NUM_FRAMES]), gop


def test_a_late_window_decodes_the_same_frames_from_far_fewer_bytes(longest_clip):
    video, stored, gop = longest_clip
    assert stored > 4 * gop, "the test needs a clip several keyframe intervals long"
    for start in (gop + 3, stored // 2, stored - 32):
        window = window_frames(start, 32, stored)
        cut, indices = cut_window(video, window, FPS)
        keyframe = int(window[0] - indices[0])
        assert start - gop < keyframe <= start and keyframe % gop == 0, (start, keyframe)
        assert first_packet_is_keyframe(cut.tobytes())
        assert len(cut) < len(video) * 0.8
        assert cut_window(video, window, FPS)[0].tobytes() == cut.tobytes()  # a row read ahead is the same row
        assert np.array_equal(dali_frames(cut, indices), dali_frames(video, window)), start


def test_a_window_at_the_start_is_left_whole(longest_clip):
    video, stored, _ = longest_clip
    window = window_frames(0, 32, stored)
    cut, indices = cut_window(video, window, FPS)
    assert cut is video and indices is window


def test_a_window_past_the_end_keeps_its_clamped_frames(clips):
    """A short clip pads its window by repeating the last stored frame: the cut keeps that frame."""
    video = np.frombuffer(clips["ramp"]["webm"], dtype=np.uint8)  # 48 frames, keyframe every 8
    window = window_frames(30, 32, 48)
    assert window[-1] == window[-14] == 47
    cut, indices = cut_window(video, window, FPS)
    assert window[0] - indices[0] == 24
    assert np.array_equal(dali_frames(cut, indices), dali_frames(video, window))


def test_a_damaged_video_raises():
    with pytest.raises(av.error.FFmpegError):
        cut_video(b"\x1aE\xdf\xa3" + bytes(500), 40, 72, FPS)


@pytest.mark.parametrize("codec, name, first", [("mjpeg", "clip.mkv", 13), ("libvpx", "clip.webm", 8),
                                                ("libx264", "clip.mkv", 0)])
def test_other_codecs_are_cut_into_their_own_container(tmp_path, codec, name, first):
    """make_shards' other codecs: mjpeg is cut into Matroska (WebM, which the cut always wrote,
    refuses it), VP8 into WebM, from the keyframe before the window (every frame for mjpeg), and
    decode to the original's frames. H.264 is not cut (its packets carry no decode time after a
    seek): the whole video comes back, where the WebM muxer used to raise."""
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=160x96:r=8:d=6", "-c:v", codec, "-g", "8", "-pix_fmt", "yuv420p"
           if codec != "mjpeg" else "yuvj420p", str(tmp_path / name))
    data = (tmp_path / name).read_bytes()
    cut, got_first = cut_video(data, 13, 30, FPS)
    assert got_first == first and (cut == data) == (first == 0)
    with av.open(io.BytesIO(cut)) as container:
        assert container.format.name == "matroska,webm" and (cut[:64].find(b"webm") >= 0) == (codec == "libvpx")
    original, decoded = full_decode(data), full_decode(cut)
    assert torch.equal(decoded, original[first:first + len(decoded)]) and first + len(decoded) >= 30


def test_a_window_over_frames_without_packets_is_an_error(tmp_path):
    """The cut finds what the PyAV decode finds (tests/test_video_decode.py): frames of the window
    without packets. DALI's decoder would resume at the next keyframe and splice the window."""
    ffmpeg(*RAMP[:4], *VP9, str(tmp_path / "ramp.webm"))
    damaged = without_packets((tmp_path / "ramp.webm").read_bytes(), range(17, 24))
    for start in (0, 12):
        with pytest.raises(ValueError, match="frame 17 of the window is missing"):
            cut_video(damaged, start, start + 20, FPS)
    cut, first = cut_video(damaged, 24, 40, FPS)
    assert first == 24 and torch.equal(full_decode(cut), full_decode(damaged)[17:33])
