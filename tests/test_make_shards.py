"""End-to-end tests of data_prep/make_shards.py: real clips and odd inputs through real ffmpeg.

One session-scoped folder holds short copies of the bundled real clips (data/sample/av,
cut to 5 s by stream copy, so their original codecs stay) and generated odd inputs. It is
sharded once (``built``); the tests then check counts, skip reasons, decoded outputs,
verification, DALI reading and a SIGKILL + resume against that uninterrupted run.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from xkd.data import format as fmt
from xkd.data import skip_reasons as sr
from xkd.data.build_shards import WORK_DIR_NAME
from xkd.data.transcode import KEYFRAME_INTERVAL

REPO = Path(__file__).resolve().parents[1]
SAMPLE_AV = REPO / "data" / "sample" / "av"
MAKE_SHARDS = REPO / "data_prep" / "make_shards.py"
FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
FPS, SHORT_SIDE, RATE = 8, 128, 16000
SHARD_ARGS = ["--shard-size", "2", "--workers", "2"]

# Input (relative path) -> expected skip reason; None: packed.
EXPECTED = {
    "speech/jwpIntro.mp4": None,  # h264 640x480 + aac 48k stereo, 5.8 s
    "graphics/default_5s.mp4": None,  # h264 256x256 + aac
    "music/pianist_5s.avi": None,  # avi: h264 + mp3 44.1k
    "music/dancer_5s.avi": None,  # avi: mpeg4 + mp3
    "face/pexels_5s.mp4": None,  # real all-zero (silent) aac track: audio, not "no audio"
    "face/single_face.mp4": sr.TOO_SHORT,  # real 2.4 s clip
    "scene/bikes_5s.mp4": sr.NO_AUDIO,  # real clip without audio
    "synthetic/tone_48k_stereo.mp4": None,
    "synthetic/vp8_vorbis.webm": None,
    "synthetic/silent_track.mkv": None,  # generated all-zero track
    "synthetic/portrait.mp4": None,  # 180x320 -> 128x228
    "synthetic/no_audio.mp4": sr.NO_AUDIO,
    "synthetic/short_2s.mp4": sr.TOO_SHORT,
    "broken/truncated.mp4": sr.TRUNCATED,  # bytes cut: no moov atom
    "broken/truncated_faststart.mp4": sr.TRUNCATED,  # index intact, data cut
    "broken/text_renamed.mp4": sr.NOT_MEDIA,
    "broken/random_bytes.mp4": sr.CORRUPT,  # binary garbage under a video extension
    "broken/random_bytes.bin": sr.NOT_MEDIA,  # binary garbage, no media extension
    "broken/empty.mp4": sr.EMPTY_FILE,
    "broken/audio_only.flac": sr.NO_VIDEO,
    "broken/still.png": sr.UNSUPPORTED_CONTAINER,
}


def ffmpeg(*args: str | Path) -> None:
    subprocess.run([*FFMPEG, *map(str, args)], check=True)


def synth(out: Path, seconds: float, *, size: str = "320x240",
          audio: str | None = "sine=frequency=440:sample_rate=44100",
          vcodec: tuple[str, ...] = ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"),
          acodec: tuple[str, ...] = ("-c:a", "aac"), extra: tuple[str, ...] = ()) -> None:
    """A generated test-pattern clip (plus a generated audio source)."""
    inputs = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25"]
    maps = ["-map", "0:v"]
    if audio:
        inputs += ["-f", "lavfi", "-i", audio]
        maps += ["-map", "1:a", *acodec]
    ffmpeg(*inputs, *maps, "-t", str(seconds), *vcodec, *extra, out)


def run_make_shards(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(MAKE_SHARDS), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"make_shards {args} exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
    return proc


def make_inputs(root: Path) -> Path:
    for folder in {Path(rel).parent for rel in EXPECTED}:
        (root / folder).mkdir(parents=True, exist_ok=True)
    trim = ["-t", "5", "-map", "0:v:0", "-map", "0:a?", "-c", "copy"]
    shutil.copy(SAMPLE_AV / "speech" / "jwpIntro.mp4", root / "speech" / "jwpIntro.mp4")
    shutil.copy(SAMPLE_AV / "face" / "single_face.mp4", root / "face" / "single_face.mp4")
    ffmpeg("-i", SAMPLE_AV / "graphics" / "default.mp4", *trim, root / "graphics" / "default_5s.mp4")
    ffmpeg("-i", SAMPLE_AV / "music" / "pianist.avi", *trim, root / "music" / "pianist_5s.avi")
    ffmpeg("-i", SAMPLE_AV / "music" / "dancer.avi", *trim, root / "music" / "dancer_5s.avi")
    ffmpeg("-i", SAMPLE_AV / "face" / "WolfgangLanger_Pexels.mp4", *trim, root / "face" / "pexels_5s.mp4")
    ffmpeg("-i", SAMPLE_AV / "scene" / "bikes.mp4", *trim, root / "scene" / "bikes_5s.mp4")

    syn = root / "synthetic"
    synth(syn / "tone_48k_stereo.mp4", 5, audio="sine=frequency=300:sample_rate=48000",
          extra=("-ac", "2", "-ar", "48000"))
    synth(syn / "vp8_vorbis.webm", 5, vcodec=("-c:v", "libvpx", "-b:v", "300k", "-deadline", "realtime"),
          acodec=("-c:a", "libvorbis"))
    synth(syn / "silent_track.mkv", 5, audio="anullsrc=r=22050:cl=stereo")
    synth(syn / "portrait.mp4", 5, size="180x320")
    synth(syn / "no_audio.mp4", 5, audio=None)
    synth(syn / "short_2s.mp4", 2)

    broken = root / "broken"
    whole = broken / "whole.tmp"
    synth(whole, 5, extra=("-f", "mp4"))
    (broken / "truncated.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    synth(whole, 5, extra=("-f", "mp4", "-movflags", "+faststart"))
    (broken / "truncated_faststart.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    whole.unlink()
    (broken / "text_renamed.mp4").write_text("this is a text file that pretends to be a video\n" * 20)
    (broken / "empty.mp4").write_bytes(b"")
    garbage = bytes((n * 7919 + 13) % 251 for n in range(20_000))
    (broken / "random_bytes.mp4").write_bytes(garbage)
    (broken / "random_bytes.bin").write_bytes(garbage)
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=500:sample_rate=16000", "-t", "5", broken / "audio_only.flac")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1", broken / "still.png")
    return root


@pytest.fixture(scope="session")
def inputs_dir(tmp_path_factory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="session")
def built(inputs_dir, tmp_path_factory) -> Path:
    """The uninterrupted reference run (progress bar on, like a user would run it)."""
    out = tmp_path_factory.mktemp("shards")
    run_make_shards("--input", inputs_dir, "--output", out, *SHARD_ARGS)
    return out


def read_samples(shard: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def all_samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("train-*.tar")):
        samples.update(read_samples(shard))
    return samples


def test_counts_and_skip_reasons(built):
    manifest = json.loads((built / fmt.MANIFEST_NAME).read_text())
    skipped = [json.loads(line) for line in (built / fmt.SKIPPED_NAME).read_text().splitlines()]
    assert manifest["num_inputs"] == len(EXPECTED)
    assert manifest["num_samples"] + len(skipped) == len(EXPECTED)
    assert {rec["source"]: rec["reason"] for rec in skipped} == {k: v for k, v in EXPECTED.items() if v}
    assert all(set(rec) == {"source", "reason", "detail"} and rec["detail"] for rec in skipped)
    packed = {json.loads(s["json"])["source"] for s in all_samples(built).values()}
    assert packed == {k for k, v in EXPECTED.items() if v is None}
    assert manifest["num_shards"] == len(manifest["shards"]) == len(list(built.glob("train-*.tar")))
    assert all(s["samples"] <= 2 for s in manifest["shards"])
    assert set(manifest["label_map"]) == {"broken", "face", "graphics", "music", "scene", "speech", "synthetic"}
    assert manifest["versions"]["ffmpeg"] and manifest["versions"]["python"] and manifest["versions"]["xkd"]
    assert manifest["args"]["fps"] == FPS and manifest["args"]["video_codec"] == "vp9"
    assert not (built / WORK_DIR_NAME).exists() and not list(built.glob("*.tmp"))
    assert json.loads((built / fmt.JOURNAL_NAME).read_text().splitlines()[0])["work_dir"] == WORK_DIR_NAME


def test_decoded_outputs(built):
    labels = json.loads((built / fmt.MANIFEST_NAME).read_text())["label_map"]
    for key, members in all_samples(built).items():
        assert sorted(members) == sorted(fmt.SAMPLE_EXTS), key
        meta = json.loads(members["json"])
        info = np.load(io.BytesIO(members["npy"]))
        assert info.dtype == np.int64 and info.shape == (len(fmt.SAMPLE_INFO_FIELDS),)
        with av.open(io.BytesIO(members["webm"])) as container:
            assert [s.type for s in container.streams] == ["video"], f"{key}: video member must be video-only"
            stream = container.streams.video[0]
            assert stream.codec_context.name == "vp9"
            frames = [frame for frame in container.decode(stream)]
        width, height = frames[0].width, frames[0].height
        assert min(width, height) == SHORT_SIDE and width % 2 == 0 and height % 2 == 0
        source_aspect = meta["source_display_width"] / meta["source_display_height"]
        assert abs(width / height - source_aspect) < 0.03, (key, width, height, source_aspect)
        assert len(frames) == meta["num_frames"] == info[fmt.NUM_FRAMES]
        assert abs(len(frames) - meta["source_duration"] * FPS) <= 2, (key, len(frames), meta["source_duration"])
        pts = [float(f.pts * f.time_base) for f in frames]
        assert np.allclose(np.diff(pts), 1 / FPS, atol=0.002)
        audio, rate = soundfile.read(io.BytesIO(members["flac"]), dtype="int16", always_2d=True)
        assert rate == RATE and audio.shape[1] == 1
        assert audio.shape[0] == meta["num_audio_samples"] == info[fmt.NUM_AUDIO_SAMPLES]
        assert abs(audio.shape[0] / RATE - meta["source_duration"]) < 0.2
        assert (meta["width"], meta["height"]) == (width, height) == (info[fmt.WIDTH], info[fmt.HEIGHT])
        assert meta["has_audio"] is True and info[fmt.HAS_AUDIO] == 1 and meta["padded"] is False
        assert info[fmt.LABEL_INDEX] == labels[meta["label"]] == meta["label_index"]
        assert meta["source"].split("/")[0] == meta["label"] and fmt.sample_key(meta["source"]) == key
        if meta["source"] in ("face/pexels_5s.mp4", "synthetic/silent_track.mkv"):
            assert meta["audio_all_zero"] and not audio.any()
        else:
            assert audio.any()
        if meta["source"] == "synthetic/tone_48k_stereo.mp4":
            assert (meta["source_sample_rate"], meta["source_channels"]) == (48000, 2)
        if meta["source"] == "synthetic/portrait.mp4":
            assert (width, height) == (128, 228)
        if meta["source"] == "music/pianist_5s.avi":
            assert (meta["source_video_codec"], meta["source_audio_codec"]) == ("h264", "mp3")


def test_pad_and_silence_policies(inputs_dir, tmp_path):
    sub = tmp_path / "in"
    for rel in ("face/single_face.mp4", "scene/bikes_5s.mp4", "synthetic/short_2s.mp4"):
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(inputs_dir / rel, sub / rel)
    out = tmp_path / "out"
    run_make_shards("--input", sub, "--output", out, "--short-policy", "pad", "--no-audio-policy", "silence",
                    "--no-progress", "--workers", "2")
    metas = {}
    for members in all_samples(out).values():
        meta = json.loads(members["json"])
        audio, rate = soundfile.read(io.BytesIO(members["flac"]), dtype="int16")
        metas[meta["source"]] = meta
        assert rate == RATE and audio.shape[0] == meta["num_audio_samples"]
        if not meta["has_audio"]:
            assert not audio.any() and abs(audio.shape[0] / RATE - meta["num_frames"] / FPS) < 0.01
            assert np.load(io.BytesIO(members["npy"]))[fmt.HAS_AUDIO] == 0
    assert set(metas) == {"face/single_face.mp4", "scene/bikes_5s.mp4", "synthetic/short_2s.mp4"}
    assert metas["face/single_face.mp4"]["padded"] and metas["synthetic/short_2s.mp4"]["padded"]
    assert metas["face/single_face.mp4"]["num_frames"] in (19, 20)
    assert not metas["scene/bikes_5s.mp4"]["padded"] and not metas["scene/bikes_5s.mp4"]["has_audio"]
    assert (out / fmt.SKIPPED_NAME).read_text() == ""


def test_verify_passes_then_fails_on_corruption(built, tmp_path):
    ok = run_make_shards("--output", built, "--verify")
    assert "verify OK" in ok.stdout
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    shard = sorted(copy.glob("train-*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700:716] = b"\xff" * 16  # inside the first member's data
    shard.write_bytes(bytes(data))
    bad = run_make_shards("--output", copy, "--verify", check=False)
    assert bad.returncode == 1 and "verify FAILED" in bad.stdout and "sha256" in bad.stdout
    # A missing member is named as such.
    shard2 = sorted(copy.glob("train-*.tar"))[1]
    kept = [m for m in tarfile.open(shard2).getmembers() if not m.name.endswith(".npy")]
    with tarfile.open(shard2) as src:
        blobs = {m.name: src.extractfile(m).read() for m in kept}
    with tarfile.open(shard2, "w") as dst:
        for member in kept:
            dst.addfile(member, io.BytesIO(blobs[member.name]))
    bad = run_make_shards("--output", copy, "--verify", check=False)
    assert bad.returncode == 1 and "expected ['webm', 'flac', 'json', 'npy']" in bad.stdout


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(built, inputs_dir, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(MAKE_SHARDS), "--input", str(inputs_dir), "--output", str(out), "--no-progress",
           *SHARD_ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    journal, first = out / fmt.JOURNAL_NAME, out / fmt.shard_name("train", 0)

    def first_shard_journaled() -> bool:  # renamed into place, then journaled
        return journal.exists() and b'"type":"shard"' in journal.read_bytes()

    deadline = time.monotonic() + 120
    while not first_shard_journaled() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: packer, workers and their ffmpeg
    proc.wait()
    assert first.exists() and not (out / fmt.MANIFEST_NAME).exists(), "the run was not interrupted mid-way"
    with open(out / fmt.JOURNAL_NAME, "ab") as fh:
        fh.write(b'{"type":"shard","shard":{"na')  # a torn journal line, as a crash mid-write leaves

    refused = run_make_shards("--input", inputs_dir, "--output", out, "--no-progress", "--shard-size", "2",
                              "--fps", "10", check=False)
    assert refused.returncode == 2 and "refusing to resume" in refused.stderr
    assert "--fps: 8 then, 10 now" in refused.stderr

    resumed = run_make_shards("--input", inputs_dir, "--output", out, "--no-progress", "--shard-size", "2",
                              "--workers", "1", "--verify")
    assert "resumed after" in resumed.stderr and "verify OK" in resumed.stdout
    names = sorted(p.name for p in built.iterdir() if p.suffix in (".tar", ".idx") or p.name == fmt.SKIPPED_NAME)
    assert names == sorted(p.name for p in out.iterdir() if p.suffix in (".tar", ".idx") or p.name == fmt.SKIPPED_NAME)
    for name in names:
        assert (out / name).read_bytes() == (built / name).read_bytes(), f"{name} differs after resume"
    ref, new = (json.loads((d / fmt.MANIFEST_NAME).read_text()) for d in (built, out))
    ref["args"].pop("workers"), new["args"].pop("workers")
    assert ref == new

    again = run_make_shards("--input", inputs_dir, "--output", out, "--no-progress", "--shard-size", "2")
    assert "already complete" in again.stderr


def test_dali_reads_every_sample_of_a_shard(built):
    from nvidia.dali import fn, pipeline_def, types

    manifest = json.loads((built / fmt.MANIFEST_NAME).read_text())
    shard = manifest["shards"][0]
    tar, idx = built / shard["name"], built / shard["index_file"]
    assert idx.name == fmt.index_name(shard["name"]) and all((built / s["index_file"]).is_file()
                                                              for s in manifest["shards"])
    expected = read_samples(tar)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipeline():
        video, audio, meta, info = fn.readers.webdataset(
            paths=[str(tar)], index_paths=[str(idx)], ext=["webm", "flac", "json", "npy"],
            missing_component_behavior="error")
        frames = fn.decoders.video(video, device="cpu")
        samples, rate = fn.decoders.audio(audio, dtype=types.INT16, downmix=True)
        return frames, samples, rate, meta, fn.decoders.numpy(info)

    pipe = pipeline()
    pipe.build()
    seen = set()
    for _ in range(shard["samples"]):
        frames, samples, rate, meta, info = (np.array(out[0]) for out in pipe.run())
        meta = json.loads(bytes(meta))
        seen.add(meta["key"])
        assert frames.shape == (info[fmt.NUM_FRAMES], info[fmt.HEIGHT], info[fmt.WIDTH], 3)
        assert samples.shape[0] == info[fmt.NUM_AUDIO_SAMPLES] and float(rate) == RATE
        assert np.array_equal(info, np.load(io.BytesIO(expected[meta["key"]]["npy"])))
    assert seen == set(expected)


def test_deterministic_tar_members(built):
    shard = sorted(built.glob("train-*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    assert [m.name.split(".", 1)[1] for m in members[:4]] == list(fmt.SAMPLE_EXTS)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (fmt.TAR_MTIME, 0, 0, "", "", fmt.TAR_MODE)}
    assert all("." not in m.name.split(".", 1)[0] for m in members)


def test_cli_rejects_bad_arguments(tmp_path, inputs_dir):
    both = run_make_shards("--input", inputs_dir, "--list", "x.csv", "--output", tmp_path / "o", check=False)
    assert both.returncode == 2 and "not both" in both.stderr
    odd = run_make_shards("--input", inputs_dir, "--output", tmp_path / "o", "--short-side", "127", check=False)
    assert odd.returncode == 2 and "even" in odd.stderr
    missing = run_make_shards("--input", tmp_path / "nope", "--output", tmp_path / "o", check=False)
    assert missing.returncode == 2 and "not a directory" in missing.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "train-000000.tar").write_bytes(b"")
    refused = run_make_shards("--input", inputs_dir / "speech", "--output", foreign, check=False)
    assert refused.returncode == 2 and "no journal.jsonl" in refused.stderr


def test_h264_warns_and_is_packed_in_matroska(inputs_dir, tmp_path):
    out = tmp_path / "h264"
    proc = run_make_shards("--input", inputs_dir / "speech", "--output", out, "--video-codec", "h264",
                           "--no-progress", "--verify")
    assert "decodes only on GPU" in proc.stderr and "verify OK" in proc.stdout
    (members,) = all_samples(out).values()
    with av.open(io.BytesIO(members["webm"])) as container:
        assert container.format.name.startswith("matroska")
        assert container.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in container.decode(video=0)) == json.loads(members["json"])["num_frames"]


def keyframe_gaps(video: bytes) -> list[int]:
    """Frames between consecutive keyframes of a video (and from the last one to the end)."""
    with av.open(io.BytesIO(video)) as container:
        flags = [frame.key_frame for frame in container.decode(video=0)]
    keys = [n for n, key in enumerate(flags) if key]
    total = len(flags)
    return [b - a for a, b in zip(keys, [*keys[1:], total])]


def test_keyframe_interval_is_the_default_gop_and_recorded(built):
    manifest = json.loads((built / fmt.MANIFEST_NAME).read_text())
    assert manifest["video"]["keyframe_interval"] == KEYFRAME_INTERVAL
    assert manifest["fingerprint"]["keyframe_interval"] == KEYFRAME_INTERVAL
    for members in all_samples(built).values():
        assert max(keyframe_gaps(members["webm"])) <= KEYFRAME_INTERVAL


def strip_keyframe_interval(fingerprint_file: Path) -> None:
    """Make a journal or manifest look written before --keyframe-interval existed (GOP 64 then)."""
    if fingerprint_file.name == fmt.MANIFEST_NAME:  # one JSON document
        manifest = json.loads(fingerprint_file.read_text())
        manifest["fingerprint"].pop("keyframe_interval")
        fingerprint_file.write_text(json.dumps(manifest, indent=2))
        return
    lines = fingerprint_file.read_text().splitlines()  # the journal: the fingerprint is on line 1
    head = json.loads(lines[0])
    head["fingerprint"].pop("keyframe_interval")
    fingerprint_file.write_text("\n".join([json.dumps(head), *lines[1:]]) + "\n")


@pytest.mark.parametrize("record", [fmt.MANIFEST_NAME, fmt.JOURNAL_NAME])
def test_a_split_from_before_the_option_resumes_only_with_gop_64(built, inputs_dir, tmp_path, record):
    old = tmp_path / "old"
    shutil.copytree(built, old)
    if record == fmt.JOURNAL_NAME:  # an interrupted run: its journal is what is checked
        (old / fmt.MANIFEST_NAME).unlink()
    strip_keyframe_interval(old / record)
    args = ("--input", inputs_dir, "--output", old, "--no-progress", "--shard-size", "2")
    refused = run_make_shards(*args, "--keyframe-interval", "8", check=False)
    assert refused.returncode == 2 and "--keyframe-interval: 64 then, 8 now" in refused.stderr
    accepted = run_make_shards(*args, "--keyframe-interval", "64")
    assert "done" in accepted.stderr or "already complete" in accepted.stderr
