"""The PyTorch fallback loader (docs/method.md §1) on a tiny real shard built from short clips."""
from __future__ import annotations

import io
import logging
import shutil
from dataclasses import replace

import av
import numpy as np
import pytest
import soundfile
import torch
import torchaudio
import torchvision.transforms.v2.functional as F

from xkd.data.logmel import LogMel
from xkd.data.sampler import EpochPlan
from xkd.data.torch_loader import ClipDataset, TorchClipLoader, collate_clips
from xkd.data.audio_finish import crop_spectrogram
from xkd.data.batch_finish import BatchFinisher, cut_video_views
from xkd.data.torch_views import crop_planes, finish_view
from xkd.data.video_decode import DecodedWindow, decode_frames, decode_planes, yuv_to_rgb_matrix
from xkd.data.video_finish import IMAGENET_MEAN, IMAGENET_STD, finish_video
from xkd.data.view_params import ColorJitter, draw_view_params, sample_seed

from media import CLIPS, TINY_VIEWS, full_decode, views_config, write_shard, ffmpeg, VP9, RAMP  # noqa: F401

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is needed to build the test shard")

def by_key(split, key: str) -> int:
    return next(i for i, ref in enumerate(split) if ref.key == key)


def test_shapes_and_dtypes(split):
    views = views_config(**TINY_VIEWS)
    dataset = ClipDataset(split, views, seed=0, epoch=0, indices=np.arange(len(split)))
    (item,), (luma, chroma) = dataset[0]["samples"], dataset[0]["window"].planes()  # the window, decoded once
    assert luma.shape[:2] == (8, 1) and chroma.shape[:2] == (8, 2) and luma.dtype == chroma.dtype == torch.uint8
    assert chroma.shape[-2:] == ((luma.shape[-2] + 1) // 2, (luma.shape[-1] + 1) // 2)  # 4:2:0
    assert item["audio_window"].shape == (32000,)
    batch = collate_clips([dataset[0], dataset[4]])
    assert batch["found"] == [] and batch["key"] == [split[0].key, split[4].key]
    assert batch["index"].tolist() == [0, 4] and batch["index"].dtype == torch.int64
    # Video stays the decoded uint8 window and audio a waveform until the trainer cuts and finishes
    # the views on its device, with these parameters.
    assert batch["video_luma"].dtype == batch["video_chroma"].dtype == torch.uint8
    assert batch["video_luma"].shape[:3] == (2, 8, 1) and batch["video_chroma"].shape[:3] == (2, 8, 2)
    expected = {"video_plane_size": ((2, 2, 2), torch.int64), "video_global_box": ((2, 4), torch.float32),
                "video_local_offset": ((2, 2), torch.int64), "video_local_box": ((2, 2, 4), torch.float32),
                "audio_window": ((2, 32000), torch.float32), "video_to_rgb": ((2, 3, 4), torch.float32),
                "video_global_color": ((2, 4), torch.float32), "video_global_flip": ((2,), torch.bool),
                "video_local_color": ((2, 2, 4), torch.float32), "video_local_flip": ((2, 2), torch.bool),
                "video_local_blur": ((2, 2), torch.float32), "audio_global_gain": ((2,), torch.float32),
                "audio_local_offset": ((2, 2), torch.int64), "audio_local_gain": ((2, 2), torch.float32),
                "audio_local_box": ((2, 2, 4), torch.float32)}
    for name, (shape, dtype) in expected.items():
        assert batch[name].shape == shape and batch[name].dtype == dtype, name
    model_inputs = {"video_global": (2, 3, 8, 32, 32), "video_local": (2, 2, 3, 4, 16, 16),
                    "audio_global": (2, 1, 80, 224), "audio_local": (2, 2, 1, 80, 112)}
    for name, value in BatchFinisher(views)(batch).items():
        assert value.shape == model_inputs[name] and value.dtype == torch.float32 and torch.isfinite(value).all()


def test_paper_geometry(split):
    views = views_config()
    loader = TorchClipLoader(split, views, batch_size=2, num_workers=0, plan=EpochPlan(len(split)), seed=0)
    batch = BatchFinisher(views)(next(iter(loader)))
    assert batch["video_global"].shape == (2, 3, 32, 112, 112)
    assert batch["video_local"].shape == (2, 1, 3, 8, 96, 96)
    assert batch["audio_global"].shape == (2, 1, 80, 448)
    assert batch["audio_local"].shape == (2, 1, 1, 80, 112)
    # Normalised video: roughly zero-mean, unit-scale values.
    assert batch["video_global"].abs().max() < 3 and -1.5 < batch["video_global"].mean() < 1.5


@pytest.mark.parametrize("key", ["ramp", "world", "ramp_offset"])
def test_decode_frames_matches_full_decode(clips, key, tmp_path):
    """Frame index = decode order, also when the stream's timestamps start after 0."""
    if key == "ramp_offset":
        ffmpeg(*RAMP[:4], *VP9, "-output_ts_offset", "0.125", str(tmp_path / "offset.webm"))
        data = (tmp_path / "offset.webm").read_bytes()
        with av.open(io.BytesIO(data)) as container:
            assert container.streams.video[0].start_time == 125
    else:
        data = clips[key]["webm"]
    full = full_decode(data)
    n = len(full)
    if key != "world":  # frame i is identifiable: brightness strictly increases with i
        assert (full.float().mean((1, 2, 3)).diff() > 2).all()
    for start in (0, 3, 8, 13, n - 8, n - 3):
        got = decode_frames(data, start, 8, fps=8)
        expected = full[start:start + 8]
        expected = torch.cat([expected, expected[-1:].expand(8 - len(expected), -1, -1, -1)])  # edge padding
        assert torch.equal(got, expected), start


def reference_global_view(luma: torch.Tensor, chroma: torch.Tensor, p, size: int) -> torch.Tensor:
    """The global video view written out with torchvision's ops alone (not xkd.data.torch_views):
    the relative box in luma pixels (luma (T, 1, H, W)), its edges rounded down to even pixels, and
    half of it in the chroma (T, 2, H/2, W/2), bilinear antialiased resize (in float), BT.601 studio-swing
    YUV -> RGB, brightness / contrast / saturation / hue (grayscale when saturation is 0), flip,
    ImageNet normalisation, (T, C, H, W) -> (C, T, H, W)."""
    from torchvision.transforms.v2 import functional as tvf

    height, width = luma.shape[-2:]
    edges = [2 * (round(float(p.global_box[i]) * (height if i % 2 == 0 else width)) // 2) for i in range(4)]

    def crop(plane):
        top, left, bottom, right = (edge * plane.shape[-1] // width for edge in edges)
        return tvf.resize(plane[..., top:bottom, left:right].float(), [size, size], antialias=True).double()

    y, (u, v) = crop(luma)[:, 0] - 16, crop(chroma).unbind(1)
    u, v = u - 128, v - 128
    x = torch.stack([1.164383 * y + 1.596027 * v, 1.164383 * y - 0.391762 * u - 0.812968 * v,
                     1.164383 * y + 2.017232 * u], dim=1).div(255).clamp(0, 1).float()
    c = p.global_color
    x = tvf.adjust_contrast(tvf.adjust_brightness(x, c.brightness), c.contrast)
    x = tvf.adjust_hue(tvf.adjust_saturation(x, c.saturation) if c.saturation > 0 else x, c.hue)
    if c.saturation == 0:
        x = tvf.rgb_to_grayscale(x, num_output_channels=3)
    if p.global_flip:
        x = x.flip(-1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return ((x - mean[:, None, None]) / std[:, None, None]).permute(1, 0, 2, 3)


@pytest.mark.parametrize("repeats", [1, 3])
def test_global_window_synchronised(clips, split, repeats):
    """Views are computed from frames video_start.. and samples video_start * 2000.. of the clip.
    With k samples per decode, each sample's views are its own parameters applied to that window;
    the audio views the trainer makes of it are the log-mels of docs/method.md §1.2-1.3."""
    views = views_config(**TINY_VIEWS)
    logmel, finisher = LogMel(views), BatchFinisher(views)
    full = full_decode(clips["ramp"]["webm"])
    luma, chroma = decode_planes(clips["ramp"]["webm"], 0, len(full), 8).planes
    audio, _ = soundfile.read(io.BytesIO(clips["ramp"]["flac"]), dtype="float32")
    index, starts = by_key(split, "ramp"), set()
    for epoch in range(4):
        params, items, decoded = views_of(split, views, epoch, index, repeats)
        window_planes = decoded.planes()
        for p, item in zip(params, items):
            start = p.video_start
            starts.add(start)
            assert p.audio_start == start * 2000
            planes = (luma[start:start + 8], chroma[start:start + 8])
            assert all(torch.equal(a, b) for a, b in zip(window_planes, planes))
            batch = collate_clips([{"window": decoded, "samples": [item], "found": []}])
            video_global, video_local = cut_video_views(batch, views)
            expected = reference_global_view(*planes, p, views.video_global_size)
            torch.testing.assert_close(item["video_to_rgb"].numpy(), yuv_to_rgb_matrix("bt601", full_range=False))
            finished = finish_video(video_global, item["video_global_color"][None],
                                    item["video_global_flip"][None], rgb_matrix=item["video_to_rgb"][None])[0]
            torch.testing.assert_close(finished, expected, atol=2e-4, rtol=0)
            for v in range(views.video_local_views):  # Tl frames at the view's offset, cropped by its box
                offset = int(p.local_offsets[v])
                frames = [plane[offset:offset + views.video_local_frames].float() for plane in planes]
                local = crop_planes(frames, p.local_boxes[v], views.video_local_size).transpose(0, 1)
                torch.testing.assert_close(video_local[0, v], local, atol=2e-3, rtol=0)
            window = torch.from_numpy(audio[start * 2000:start * 2000 + 32000])
            assert torch.equal(item["audio_window"], window)
            assert item["audio_global_gain"] == torch.tensor(p.audio_gain, dtype=torch.float32)
            finished = finisher(batch)
            torch.testing.assert_close(finished["audio_global"][0], logmel((window * p.audio_gain)[None]),
                                       atol=1e-5, rtol=0)
            for a in range(2):
                offset = int(p.audio_local_offsets[a])
                assert offset + 16000 <= 32000
                segment = torch.from_numpy(audio[start * 2000 + offset:start * 2000 + offset + 16000])
                spec = logmel((segment * float(p.audio_local_gains[a]))[None])[0]
                box = tuple(int(b) for b in p.audio_local_boxes[a])
                torch.testing.assert_close(finished["audio_local"][0, a], crop_spectrogram(spec, box),
                                           atol=1e-5, rtol=0)
    assert any(start > 0 for start in starts)  # the seek path ran


def views_of(split, views, epoch: int, index: int, repeats: int) -> tuple[list, list[dict], DecodedWindow]:
    """(view parameters, items) of each of clip ``index``'s samples, and the clip's decoded window;
    k > 1 draws differ per sample."""
    dataset = ClipDataset(split, views, seed=3, epoch=epoch, indices=np.arange(len(split)), repeats=repeats)
    params, item = dataset.params(index), dataset[index]
    assert len(params) == len(item["samples"]) == repeats
    assert len({p.video_start for p in params}) == 1  # one window, decoded once
    assert len({tuple(p.global_box) for p in params}) == repeats
    return params, item["samples"], item["window"]


def test_global_window_exact_with_padding(clips, split):
    """Paper geometry on a clip shorter than 4 s: the window is the FLAC read directly, zero padded."""
    views = views_config()
    index = by_key(split, "single_face")
    dataset = ClipDataset(split, views, seed=0, epoch=0, indices=[index])
    (p,), (item,) = dataset.params(index), dataset[0]["samples"]
    video_global, _ = cut_video_views(collate_clips([dataset[0]]), views)
    audio, _ = soundfile.read(io.BytesIO(clips["single_face"]["flac"]), dtype="float32")
    assert p.video_start == 0 and len(audio) < 64000
    window = torch.zeros(64000)
    window[:len(audio)] = torch.from_numpy(audio)
    assert torch.equal(item["audio_window"], window)
    # The video is shorter than 32 frames: padded by repeating its last frame.
    assert torch.equal(video_global[0, :, -1], video_global[0, :, -2])


def test_logmel_matches_spec_formula():
    views = views_config()
    waveform = 0.1 * torch.randn(2, 64000, generator=torch.Generator().manual_seed(0))
    spec = torch.stft(waveform, n_fft=1024, hop_length=143, win_length=1024, window=torch.hann_window(1024),
                      center=True, pad_mode="reflect", return_complex=True).abs() ** 2
    bank = torchaudio.functional.melscale_fbanks(513, 0.0, 8000.0, 80, 16000, norm="slaney", mel_scale="slaney")
    mel = torch.einsum("bft,fm->bmt", spec, bank)
    expected = (torch.log(mel + 1.1920929e-07) - (-5.3688107)) / 4.410007
    got = LogMel(views)(waveform)
    assert got.shape == (2, 80, 448)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_two_ranks_read_disjoint_halves(split):
    views = views_config(**TINY_VIEWS)
    seen = []
    for rank in range(2):
        plan = EpochPlan(len(split), world_size=2, rank=rank, seed=5)
        loader = TorchClipLoader(split, views, batch_size=1, num_workers=0, plan=plan, seed=5)
        seen.append([i for batch in loader for i in batch["index"].tolist()])
        assert (loader.state()["epoch"], loader.state()["position"]) == (1, 0)
    assert len(seen[0]) == len(seen[1]) == len(split) // 2
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(len(split)))


def test_resume_mid_epoch_reproduces_batches(split):
    views = views_config(**TINY_VIEWS)
    plan = EpochPlan(len(split), seed=1)
    full = TorchClipLoader(split, views, batch_size=2, num_workers=2, plan=plan, seed=1)
    assert full.batches_per_epoch == len(full) == 3
    uninterrupted, states = [], []
    for batch in full:
        uninterrupted.append(batch)
        states.append(full.state())
    clean = {"corrupt_samples": [], "corrupt_pending": []}
    assert states == [{"epoch": 0, "position": 2, **clean}, {"epoch": 0, "position": 4, **clean},
                      {"epoch": 0, "position": 6, **clean}]
    assert full.state() == {"epoch": 1, "position": 0, **clean}
    resumed = TorchClipLoader(split, views, batch_size=2, num_workers=0, plan=plan, seed=1)
    resumed.load_state({"epoch": 0, "position": 2})  # a state from before corrupt samples were tracked
    batches = list(resumed)
    assert len(batches) == 2
    for got, expected in zip(batches, uninterrupted[1:]):
        assert got["key"] == expected["key"]
        for name in ("video_luma", "video_chroma", "video_plane_size", "video_global_box", "video_local_box",
                     "audio_window", "audio_global_gain", "audio_local_box", "index"):
            assert torch.equal(got[name], expected[name]), name
    # The next epoch follows: a different order and different views of the same samples.
    assert resumed.state() == {"epoch": 1, "position": 0, **clean}
    next_epoch = next(iter(resumed))
    assert resumed.state() == {"epoch": 1, "position": 2, **clean}
    assert not torch.equal(next_epoch["video_global_box"], uninterrupted[0]["video_global_box"])


def test_views_depend_only_on_seed_epoch_index(split):
    views = views_config(**TINY_VIEWS)
    a = ClipDataset(split, views, seed=7, epoch=2, indices=[3, 1])
    b = ClipDataset(split, views, seed=7, epoch=2, indices=[1])
    c = ClipDataset(split, views, seed=7, epoch=3, indices=[1])
    (first,), (again,), (other,) = a[1]["samples"], b[0]["samples"], c[0]["samples"]
    for name in ("video_global_box", "video_local_box", "audio_global_gain", "audio_local_gain", "audio_local_box"):
        assert torch.equal(first[name], again[name])
        assert not torch.equal(first[name], other[name])
    assert torch.equal(first["audio_window"], again["audio_window"])


def test_corrupt_samples_are_replaced_and_counted(clips, tmp_path, caplog):
    """A corrupt sample's slot takes the first readable stand-in (the same slot of the next batch),
    with views of its own; the loader logs each corrupt sample once and counts it."""
    samples = {"good_a": clips["ramp"], "garbage": {**clips["world"], "webm": b"not a webm" * 100},
               "good_b": clips["default"],
               "no_audio_member": {ext: data for ext, data in clips["jwpIntro"].items() if ext != "flac"}}
    split = write_shard(tmp_path / "bad-000000.tar", samples)
    views = views_config(**TINY_VIEWS)
    order = np.array([by_key(split, key) for key in ("garbage", "good_a", "good_b", "no_audio_member")])
    dataset = ClipDataset(split, views, seed=0, epoch=0, indices=order, batch_size=2)
    slot = dataset[0]  # garbage's slot: good_b, 2 positions on, stands in
    (item,), (own,) = slot["samples"], dataset[2]["samples"]
    assert item["key"] == "good_b" and [split[i].key for i, _ in slot["found"]] == ["garbage"]
    assert not torch.equal(item["video_global_box"], own["video_global_box"])  # good_b's own slot: other views

    loader = TorchClipLoader(split, views, batch_size=2, num_workers=2, plan=EpochPlan(4), seed=0)
    with caplog.at_level(logging.WARNING, logger="xkd.data.sample_check"):
        batches = list(loader) + list(loader)
    assert [len(batch["key"]) for batch in batches] == [2, 2, 2, 2]
    assert {key for batch in batches for key in batch["key"]} == {"good_a", "good_b"}
    assert loader.corrupt_samples == 2
    for key in ("garbage", "no_audio_member"):
        assert caplog.text.count(f"skipping corrupt sample {key!r}") == 1
    assert "bad-000000.tar" in caplog.text
    assert loader.state()["epoch"] == 2 and loader.state()["corrupt_pending"] == sorted(
        by_key(split, key) for key in ("garbage", "no_audio_member"))


def test_view_ops_semantics(clips):
    """Full box = plain resize (uint8); identity finish = normalisation; flip, grayscale,
    spectrogram crop."""
    views = views_config(**TINY_VIEWS)
    frames = full_decode(clips["world"]["webm"])[:8]
    p = draw_view_params(sample_seed(0, 0, 0), views, 48, 96000, frames.shape[2], frames.shape[3])
    plain = replace(p, global_box=np.array([0, 0, 1, 1], np.float32))
    resized = F.resize(frames, [32, 32], antialias=True)
    view = crop_planes((frames,), plain.global_box, views.video_global_size)
    assert view.dtype == torch.uint8 and torch.equal(view, resized)
    expected = F.normalize(resized.float() / 255, IMAGENET_MEAN, IMAGENET_STD).permute(1, 0, 2, 3)
    torch.testing.assert_close(finish_view(resized), expected, atol=1e-5, rtol=0)
    assert torch.equal(finish_view(resized, flip=True), finish_view(resized).flip(-1))
    gray = finish_view(resized, ColorJitter(1.2, 0.8, 0.0, 0.1))
    std, mean = (torch.tensor(stat)[:, None, None, None] for stat in (IMAGENET_STD, IMAGENET_MEAN))
    unnormalised = gray * std + mean
    torch.testing.assert_close(unnormalised[0], unnormalised[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(unnormalised[0], unnormalised[2], atol=1e-5, rtol=0)

    spec = torch.randn(80, 112)
    torch.testing.assert_close(crop_spectrogram(spec, (0, 0, 80, 112))[0], spec)
    padded = crop_spectrogram(spec, (0, -112, 80, 112))[0]  # left half of the crop is padding
    assert padded[:, :50].abs().max() < 1e-6 and padded[:, 60:].abs().mean() > 0.5
