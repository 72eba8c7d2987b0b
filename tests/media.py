"""Real test media: a tiny shard built from the project's sample clips (data/sample/av).

The clips are transcoded with the real ffmpeg to the shard format of xkd/data/format.py and
packed with a DALI index, so the DALI and PyTorch loaders read real files.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import av
import numpy as np
import soundfile
import torch

from xkd.config import config_from_dict
from xkd.data.format import SAMPLE_INFO_FIELDS
from xkd.data.shard_index import index_split

SAMPLE_AV = Path(__file__).resolve().parents[1] / "data" / "sample" / "av"


def sample_clip(name: str) -> Path:
    """Path of a sample clip by file name (the clips sit in per-label folders)."""
    matches = sorted(SAMPLE_AV.rglob(name))
    if not matches:
        raise FileNotFoundError(f"{SAMPLE_AV}: no sample clip named {name}")
    return matches[0]


TINY_VIEWS = {"video_global_frames": 8, "video_global_size": 32, "video_local_frames": 4, "video_local_size": 16,
              "video_local_views": 2, "audio_global_seconds": 2.0, "audio_local_views": 2}
# A synthetic clip whose frame i has luma 20 + 4 i (frames are identifiable by brightness) and
# whose tone gets louder over time; five real clips (one without audio, one shorter than 4 s).
RAMP = ["-f", "lavfi", "-i", "color=c=gray:s=160x128:r=8:d=6,format=yuv420p,geq=lum='20+4*N':cb=128:cr=128",
        "-f", "lavfi", "-i", "aevalsrc='0.1*(1+t)*sin(2*PI*440*t)':s=16000:d=6"]
CLIPS = {"ramp": None, "jwpIntro": "jwpIntro.mp4", "default": "default.mp4", "world": "world.mp4",
         "single_face": "single_face.mp4", "bikes": "bikes.mp4"}
VP9 = ["-c:v", "libvpx-vp9", "-g", "8", "-threads", "1", "-deadline", "realtime", "-cpu-used", "8"]


def views_config(**views):
    return config_from_dict({"views": views}).views


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def full_decode(data: bytes) -> torch.Tensor:
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)


def without_packets(data: bytes, frames: range) -> bytes:
    """A WebM whose packets of ``frames`` are gone (their pts / 125 ms, the RAMP's 8 fps), as when
    damage makes the demuxer skip to the next cluster: the decoder goes on from the next keyframe."""
    output = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(output, "w", format="webm") as target:
        stream = source.streams.video[0]
        copy = target.add_stream_from_template(stream)
        for packet in source.demux(stream):
            if packet.size and round(packet.pts * stream.time_base * 8) not in frames:
                packet.stream = copy
                target.mux(packet)
    return output.getvalue()


def encode_sample(key: str, source: str | None, work: Path, label: int) -> dict[str, bytes]:
    webm, flac = work / f"{key}.webm", work / f"{key}.flac"
    if source is None:
        ffmpeg(*RAMP, "-map", "0:v", *VP9, str(webm))
        ffmpeg(*RAMP, "-map", "1:a", "-ac", "1", "-ar", "16000", "-c:a", "flac", str(flac))
    else:
        src = str(sample_clip(source))
        ffmpeg("-t", "6", "-i", src, "-an", "-vf", "fps=8,scale=-2:128", *VP9, str(webm))
        with av.open(src) as container:
            has_audio = bool(container.streams.audio)
        silence = ["-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "6"]
        audio_in = ["-t", "6", "-i", src, "-vn"] if has_audio else silence
        ffmpeg(*audio_in, "-ac", "1", "-ar", "16000", "-c:a", "flac", str(flac))
    frames = full_decode(webm.read_bytes())
    samples = soundfile.info(str(flac)).frames
    info = np.array([len(frames), samples, label, int(source is None or has_audio), frames.shape[3], frames.shape[2]],
                    dtype=np.int64)
    assert len(info) == len(SAMPLE_INFO_FIELDS)
    npy = io.BytesIO()
    np.save(npy, info)
    meta = {"source": source or "lavfi ramp", "label": label, "frames": len(frames), "fps": 8, "samples": samples}
    return {"webm": webm.read_bytes(), "flac": flac.read_bytes(), "json": json.dumps(meta).encode(),
            "npy": npy.getvalue()}


def write_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> list:
    """Members of one key consecutive, then the DALI index next to the tar."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    subprocess.run([str(Path(sys.executable).parent / "wds2idx"), str(path), str(path.with_suffix(".idx"))],
                   check=True, capture_output=True)
    return index_split(str(path))


def child_pids(parent: int) -> list[int]:
    """Direct children of ``parent`` (from /proc: field 4 of /proc/<pid>/stat is the parent pid)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def free_port() -> int:
    """A TCP port free on this machine now, for a test's rendezvous (pid-derived ports collide)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
