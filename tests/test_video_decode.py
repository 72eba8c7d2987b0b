"""PyAV window decode into YUV planes (xkd/data/video_decode.py): the YUV -> RGB matrices by hand,
agreement with swscale's RGB for each kind of stream make_shards or a user's shards may hold, and
the same frames as the RGB decode."""
from __future__ import annotations

import io
import shutil

import av
import numpy as np
import pytest
import torch

from media import RAMP, VP9, ffmpeg, without_packets
from xkd.data import video_decode
from xkd.data.video_decode import RGB_TO_RGB, decode_frames, decode_planes, open_video, yuv_to_rgb_matrix
from xkd.data.video_finish import to_rgb

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is needed to build the test clips")

# A colourful moving pattern (saturated bars, gradients, text) at 8 fps.
PATTERN = ["-f", "lavfi", "-i", "testsrc2=s=160x96:r=8:d=3"]


def test_bt601_limited_matrix_is_the_textbook_one():
    """R = 1.164383 (Y - 16) + 1.596027 (V - 128), G = 1.164383 (Y - 16) - 0.391762 (U - 128) - 0.812968 (V - 128),
    B = 1.164383 (Y - 16) + 2.017232 (U - 128), all over 255."""
    expected = np.array([[1.164383, 0, 1.596027], [1.164383, -0.391762, -0.812968], [1.164383, 2.017232, 0]]) / 255
    matrix = yuv_to_rgb_matrix("bt601", full_range=False)
    np.testing.assert_allclose(matrix[:, :3], expected, atol=2e-8)
    np.testing.assert_allclose(matrix[:, 3], -expected @ np.array([16, 128, 128]), atol=1e-6)


@pytest.mark.parametrize("standard, full_range, yuv, rgb", [
    ("bt601", False, (16, 128, 128), (0, 0, 0)),  # studio black and white
    ("bt601", False, (235, 128, 128), (1, 1, 1)),
    ("bt601", False, (81, 90, 240), (1, 0, 0)),  # studio-swing red, green, blue (rounded codes)
    ("bt601", False, (145, 54, 34), (0, 1, 0)),
    ("bt601", False, (41, 240, 110), (0, 0, 1)),
    ("bt709", False, (63, 102, 240), (1, 0, 0)),
    ("bt709", False, (173, 42, 26), (0, 1, 0)),
    ("bt709", False, (32, 240, 118), (0, 0, 1)),
    ("bt601", True, (0, 128, 128), (0, 0, 0)),  # full range: 0..255
    ("bt601", True, (255, 128, 128), (1, 1, 1)),
    ("bt601", True, (76, 85, 255), (1, 0, 0)),
])
def test_primaries_land_where_the_standards_put_them(standard, full_range, yuv, rgb):
    """The YUV codes of black, white and the primaries (rounded to integers, so within 1 %)."""
    got = yuv_to_rgb_matrix(standard, full_range) @ np.array([*yuv, 1.0])
    np.testing.assert_allclose(np.clip(got, 0, 1), rgb, atol=0.012)


def test_rgb_matrix_is_a_scale():
    views = torch.randint(0, 256, (2, 3, 2, 4, 4), dtype=torch.uint8)
    converted = to_rgb(views, torch.from_numpy(np.stack([RGB_TO_RGB] * 2)))
    torch.testing.assert_close(converted, views.float() / 255, atol=1e-7, rtol=0)


def encode(tmp_path, name: str, *args: str) -> bytes:
    path = tmp_path / name
    ffmpeg(*PATTERN, *args, str(path))
    return path.read_bytes()


STREAMS = {  # make_shards' default (VP9, yuv420p, untagged), its mjpeg option (full range), BT.709 and
    # BT.2020 tagged streams, and an RGB codec (converted to YUV by swscale first)
    "vp9": ("clip.webm", [*VP9, "-pix_fmt", "yuv420p"]),
    "mjpeg": ("clip.mkv", ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"]),
    "vp9_bt709": ("clip709.webm", [*VP9, "-pix_fmt", "yuv420p", "-colorspace", "bt709", "-color_primaries", "bt709",
                                   "-color_trc", "bt709", "-color_range", "tv"]),
    "vp9_bt2020": ("clip2020.webm", [*VP9, "-pix_fmt", "yuv420p", "-colorspace", "bt2020nc", "-color_range", "tv"]),
    "ffv1_rgb": ("rgb.mkv", ["-c:v", "ffv1", "-pix_fmt", "bgr0"]),
    "h264": ("clip.mkv", ["-c:v", "libx264", "-g", "8", "-pix_fmt", "yuv420p"]),  # make_shards' GPU-only option
    # Not a shard's container (the evaluation decodes users' clips): found by FFmpeg's format probe.
    "h264_mp4": ("clip.mp4", ["-c:v", "libx264", "-g", "8", "-pix_fmt", "yuv420p"]),
}
H264 = ["-c:v", "libx264", "-g", "8", "-threads", "1", "-pix_fmt", "yuv420p"]


@pytest.mark.parametrize("kind", list(STREAMS))
def test_planes_give_swscales_rgb(tmp_path, kind):
    """The planes, converted by their matrix (chroma repeated to the luma's size), are the frames
    swscale converts to RGB, up to its rounding: ~1 grey level on average (measured 0.3-1.4),
    none of the channel offsets a wrong matrix or range gives (5-20 levels)."""
    name, args = STREAMS[kind]
    data = encode(tmp_path, name, *args)
    window = decode_planes(data, 4, 8, fps=8)
    luma, chroma = window.planes
    assert luma.dtype == chroma.dtype == torch.uint8 and luma.shape == (8, 1, 96, 160)
    factor = luma.shape[-1] // chroma.shape[-1]
    yuv = torch.cat([luma, chroma.repeat_interleave(factor, -1).repeat_interleave(factor, -2)], 1)
    got = to_rgb(yuv.permute(1, 0, 2, 3)[None], torch.from_numpy(window.to_rgb)[None])[0] * 255
    expected = decode_frames(data, 4, 8, fps=8).permute(1, 0, 2, 3).float()
    diff = got - expected
    assert diff.abs().mean() < 1.6, diff.abs().mean()
    assert all(abs(float(diff[c].mean())) < 1.6 for c in range(3)), [float(diff[c].mean()) for c in range(3)]
    if kind == "mjpeg":
        assert window.to_rgb[0, 0] == pytest.approx(1 / 255)  # full range
    if kind in ("vp9_bt709", "vp9_bt2020"):
        np.testing.assert_allclose(window.to_rgb, yuv_to_rgb_matrix(kind[4:], full_range=False))


def decoded(container) -> list[tuple]:
    """Each frame's timestamp, pixel format, colour tags and planes."""
    return [(f.pts, f.format.name, f.colorspace, f.color_range, f.color_primaries, f.color_trc,
             [bytes(plane) for plane in f.planes]) for f in container.decode(video=0)]


@pytest.mark.parametrize("kind", list(STREAMS))
def test_open_without_the_probe_decode_gives_the_same_frames(tmp_path, kind):
    """``open_video`` keeps FFmpeg's probe from decoding (no decoder on the container's whitelist);
    the stream's decoder still decodes every frame, with the same format and colour tags, and the
    container learns nothing from a decode (no pixel format: the probe really did not decode).
    H.264, whose first timestamp only the probe's decode finds, is opened with the probe; a
    container other than Matroska (named, as the shards' is) by FFmpeg's format probe."""
    name, args = STREAMS[kind]
    data = encode(tmp_path, name, *args)
    with av.open(io.BytesIO(data)) as probed, open_video(data) as unprobed:
        assert unprobed.format.name.split(",")[0] == probed.format.name.split(",")[0]  # ("matroska" named)
        assert probed.streams.video[0].codec_context.format is not None
        assert (unprobed.streams.video[0].codec_context.format is None) == (kind != "h264")  # (MP4 gives the first timestamp itself)
        assert unprobed.streams.video[0].start_time == probed.streams.video[0].start_time
        assert decoded(unprobed) == decoded(probed)


def frame_record(frame) -> tuple:
    """A frame's timestamp, format, colour tags and pixels (not the padding at its rows' ends)."""
    return (frame.pts, frame.format.name, frame.colorspace, frame.color_range, frame.color_primaries, frame.color_trc,
            [video_decode._plane_array(plane).tobytes() for plane in frame.planes])


def test_a_reused_decoder_gives_what_the_streams_own_decoder_gives(tmp_path, monkeypatch):
    """Windows of streams of each kind, sizes and colour tags, decoded one after another on one
    thread (VP9's and VP8's decoders reused, reset between windows, tagged like each stream), are
    the frames, formats and colour tags the stream's own decoder gives."""
    streams = {**STREAMS,
               "vp8_bt709": ("vp8.webm", ["-c:v", "libvpx", "-g", "8", "-pix_fmt", "yuv420p", "-colorspace", "bt709",
                                          "-color_primaries", "bt709", "-color_trc", "bt709"]),
               "mjpeg_bt709": ("tagged.mkv", ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p",
                                              "-colorspace", "bt709"]),
               "vp9_small": ("small.webm", [*VP9, "-vf", "scale=80:48", "-pix_fmt", "yuv420p"])}
    videos = [encode(tmp_path, name, *args) for name, args in streams.values()]
    windows = [(data, start) for start in (0, 5, 13) for data in videos]
    reused = [video_decode._decode_window(data, start, 8, 8, frame_record, None) for data, start in windows]
    assert video_decode._reused.__dict__.keys() == {"vp9", "vp8"}
    monkeypatch.setattr(video_decode, "REUSABLE_DECODERS", ())
    own = [video_decode._decode_window(data, start, 8, 8, frame_record, None) for data, start in windows]
    assert reused == own


def full_luma(data: bytes) -> torch.Tensor:
    with av.open(io.BytesIO(data)) as container:
        frames = [np.frombuffer(f.planes[0], np.uint8).reshape(f.planes[0].height, f.planes[0].line_size)
                  [:, :f.planes[0].width].copy() for f in container.decode(video=0)]
    return torch.from_numpy(np.stack(frames))[:, None]


@pytest.mark.parametrize("codec", ["vp9", "h264"])
@pytest.mark.parametrize("offset", [False, True])
def test_planes_hold_the_window_frames_padded_at_the_end(tmp_path, offset, codec):
    """Frame index = display order (also when timestamps start after 0, and with H.264's B-frames),
    seeking to the window: the ramp's luma identifies each frame; past the end the last frame repeats."""
    extra = ["-output_ts_offset", "0.5"] if offset else []
    name = "ramp.webm" if codec == "vp9" else "ramp.mkv"
    ffmpeg(*RAMP[:4], *(VP9 if codec == "vp9" else H264), *extra, str(tmp_path / name))
    data = (tmp_path / name).read_bytes()
    full = full_luma(data)
    n = len(full)
    assert (full.float().mean((1, 2, 3)).diff() > 2).all()
    for start in (0, 3, 8, 13, n - 8, n - 3):
        luma, chroma = decode_planes(data, start, 8, fps=8, stored_frames=n).planes
        expected = full[start:start + 8]
        expected = torch.cat([expected, expected[-1:].expand(8 - len(expected), -1, -1, -1)])
        assert torch.equal(luma, expected), start
        assert len(chroma) == 8


def test_a_window_over_frames_lost_to_damage_is_an_error(tmp_path):
    """Frames 17-23 without packets (GOP 8: the decoder resumes at keyframe 24): a window over the
    gap would splice two moments together, so it fails; windows beside it decode as before."""
    ffmpeg(*RAMP[:4], *VP9, str(tmp_path / "ramp.webm"))
    data = (tmp_path / "ramp.webm").read_bytes()
    full = full_luma(data)
    damaged = without_packets(data, range(17, 24))
    with pytest.raises(ValueError, match="frame 17 of the window is missing \\(the video goes on with frame 24\\)"):
        decode_planes(damaged, 12, 8, fps=8, stored_frames=len(full))
    for start in (0, 9, 24):
        assert torch.equal(decode_planes(damaged, start, 8, fps=8, stored_frames=len(full)).planes[0],
                           full[start:start + 8]), start


def test_a_faster_stream_gives_the_first_frame_at_each_index(tmp_path):
    """A 16 fps video read at 8 fps: frame i is the first frame shown at round(t * 8) = i (two
    frames land on most indices; before, both went into the window, which then ran slow)."""
    ffmpeg(RAMP[0], RAMP[1], RAMP[2], RAMP[3].replace("r=8", "r=16"), *VP9, str(tmp_path / "ramp16.webm"))
    data = (tmp_path / "ramp16.webm").read_bytes()
    full = full_luma(data)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        shown = [round((frame.pts - stream.start_time) * stream.time_base * 8) for frame in container.decode(stream)]
    first_at = {}
    for j, index in enumerate(shown):
        first_at.setdefault(index, j)
    for start in (0, 5, 10):
        expected = full[[first_at[i] for i in range(start, start + 8)]]
        assert torch.equal(decode_planes(data, start, 8, fps=8).planes[0], expected), start


def test_fewer_frames_than_claimed_and_garbage_are_errors(tmp_path):
    ffmpeg(*RAMP[:4], *VP9, str(tmp_path / "ramp.webm"))
    data = (tmp_path / "ramp.webm").read_bytes()
    n = len(full_luma(data))
    with pytest.raises(ValueError, match=f"info vector says {n + 10} frames"):
        decode_planes(data, n - 4, 8, fps=8, stored_frames=n + 10)
    with pytest.raises(av.error.InvalidDataError):
        decode_planes(b"\x1aE\xdf\xa3 this is not a webm" * 50, 0, 8, fps=8)


def test_plane_crops_cut_the_same_picture_from_luma_and_chroma():
    """4:2:0 planes: the box's edges land on even luma pixels, so the chroma crop is exactly half
    of the luma crop (the same picture); a 4:4:4 group crops the same pixels in every plane."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    from xkd.data.torch_views import crop_planes

    g = torch.Generator().manual_seed(0)
    luma = torch.randint(0, 256, (3, 1, 64, 90), dtype=torch.uint8, generator=g)
    chroma = torch.randint(0, 256, (3, 2, 32, 45), dtype=torch.uint8, generator=g)
    rng = np.random.default_rng(0)
    for _ in range(20):
        top, left = rng.uniform(0, 0.5, 2)
        box = np.array([top, left, top + rng.uniform(0.2, 0.5), left + rng.uniform(0.2, 0.5)])
        edges = [2 * (round(box[i] * (64 if i % 2 == 0 else 90)) // 2) for i in range(4)]
        got = crop_planes((luma, chroma), box, 16)
        t, l, b, r = edges

        def resized(plane, t, l, h, w):
            return tvf.resized_crop(plane, t, l, h, w, [16, 16], interpolation=InterpolationMode.BILINEAR,
                                    antialias=True)
        assert torch.equal(got[:, :1], resized(luma, t, l, b - t, r - l))
        assert torch.equal(got[:, 1:], resized(chroma, t // 2, l // 2, (b - t) // 2, (r - l) // 2))
    full = torch.randint(0, 256, (3, 2, 64, 90), dtype=torch.uint8, generator=g)
    both = crop_planes((luma, full), np.array([0.1, 0.2, 0.7, 0.9]), 16)
    assert torch.equal(both[:, 1:], crop_planes((full[:, :1], full), np.array([0.1, 0.2, 0.7, 0.9]), 16)[:, 1:])


@pytest.mark.parametrize("tags", [[], ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709"]])
def test_dalis_bt601_frames_are_corrected_to_the_streams_standard(tmp_path, tags):
    """DALI's decoder converts with BT.601 whatever the tag; with the correction matrix its frames
    finish to the colours of the YUV planes converted by the stream's own matrix (chroma upsampled
    bilinearly, as DALI does: measured 0.2-0.4 grey levels on the saturated pattern; uncorrected, a
    BT.709 stream is 7.4 off)."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    from xkd.data.video_decode import bt601_rgb_matrix, stream_colour_standard

    data = encode(tmp_path, "clip.webm", *VP9, "-pix_fmt", "yuv420p", *tags)
    standard = stream_colour_standard(data)
    assert standard == ("bt709" if tags else "bt601")

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def decode():
        video = fn.external_source(source=[[np.frombuffer(data, np.uint8)]], batch=True)
        return fn.decoders.video(video, device="cpu", frames=np.arange(8, dtype=np.int32) + 4, pad_mode="none")

    pipe = decode()
    pipe.build()
    (frames,) = pipe.run()
    rgb = torch.from_numpy(np.array(frames.as_tensor())[0]).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    window = decode_planes(data, 4, 8, fps=8)
    luma, chroma = window.planes
    chroma = torch.nn.functional.interpolate(chroma.float(), size=luma.shape[-2:], mode="bilinear", align_corners=False)
    reference = to_rgb(torch.cat([luma.float(), chroma], 1).permute(1, 0, 2, 3)[None],
                       torch.from_numpy(window.to_rgb)[None])[0] * 255
    corrected = to_rgb(rgb, torch.from_numpy(bt601_rgb_matrix(standard))[None])[0] * 255
    assert (corrected - reference).abs().mean() < 1.0, (corrected - reference).abs().mean()
    if tags:
        assert (to_rgb(rgb, None)[0] * 255 - reference).abs().mean() > 4  # the correction is needed
