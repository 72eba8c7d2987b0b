"""The on-disk sample format shared by ``data_prep/make_shards.py`` and the loaders.

A split is a directory of WebDataset tar shards::

    <output>/<split>-000000.tar      samples, in a deterministic order
    <output>/<split>-000000.idx      DALI index (wds2idx) of that shard
    <output>/manifest.json           written last: shards, counts, bytes, label map, args, versions
    <output>/skipped.jsonl           one line per input that was not packed, with the reason

Each sample is four tar members sharing the key ``<key>`` (a stable id of the source):

    <key>.webm   video only (no audio track), ``fps`` frames/s, short side ``short_side``,
                 VP9 by default (decodable by DALI's CPU backend and by NVDEC)
    <key>.flac   audio, 16 kHz mono FLAC (silence when the source had none and the
                 policy keeps such clips)
    <key>.json   metadata: source path, label(s), duration, frame count, fps, sample count,
                 original codecs and size
    <key>.npy    int64 vector ``SAMPLE_INFO_FIELDS`` (numbers DALI needs at decode time, since
                 DALI cannot parse JSON inside its graph)

Audio-only samples (``make_shards.py --no-video-policy audio-only``, for audio datasets such as
ESC-50 or FSD50K) have no ``.webm`` member: three members in ``AUDIO_ONLY_EXTS`` order, json
``"has_video": false`` (absent means true), and ``num_frames``, ``width``, ``height`` 0 in the
npy. Pretraining needs both streams; such shards are for evaluation (xkd/evaluation).

Members are written in ``SAMPLE_EXTS`` order. With ``--video-codec mjpeg|h264`` the
``.webm`` member is a Matroska file (WebM is a subset of Matroska and both are read by
the same demuxer); the codec and container are recorded in the json and the manifest.
Keys never contain a dot (WebDataset and ``wds2idx`` split member names at the first dot).

Bookkeeping of the writer (not read by loaders)::

    <output>/journal.jsonl      completed shards, for resuming an interrupted run
"""
from __future__ import annotations

import hashlib

VIDEO_EXT = "webm"
AUDIO_EXT = "flac"
META_EXT = "json"
INFO_EXT = "npy"

# Layout of the <key>.npy int64 vector.
# width/height: decoded frame size of the transcoded video (the loaders draw crop boxes with it).
SAMPLE_INFO_FIELDS = ("num_frames", "num_audio_samples", "label_index", "has_audio", "width", "height")
NUM_FRAMES, NUM_AUDIO_SAMPLES, LABEL_INDEX, HAS_AUDIO, WIDTH, HEIGHT = range(len(SAMPLE_INFO_FIELDS))
NO_LABEL = -1

SAMPLE_EXTS = (VIDEO_EXT, AUDIO_EXT, META_EXT, INFO_EXT)  # member order inside a sample
AUDIO_ONLY_EXTS = (AUDIO_EXT, META_EXT, INFO_EXT)  # member order of an audio-only sample

MANIFEST_NAME = "manifest.json"
SKIPPED_NAME = "skipped.jsonl"
JOURNAL_NAME = "journal.jsonl"

# Bumped when the meaning of a member or a json field changes.
FORMAT_VERSION = 1

# Fixed tar member attributes, so that rewriting a shard gives identical bytes.
TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z
TAR_MODE = 0o644


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def index_name(shard: str) -> str:
    """DALI index file next to a shard: foo-000001.tar -> foo-000001.idx."""
    return shard[: -len(".tar")] + ".idx" if shard.endswith(".tar") else shard + ".idx"


def sample_key(source: str) -> str:
    """Stable tar key of a source path (relative, ``/``-separated): a readable slug plus a
    hash of the exact path, e.g. ``music/pianist.avi`` -> ``music_pianist_avi-0c854ae9fc``.
    Only ``[A-Za-z0-9_-]`` (no dots), at most 80 characters."""
    slug = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in source)
    slug = slug.strip("_")[-64:] or "clip"
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:10]
    return f"{slug}-{digest}"
