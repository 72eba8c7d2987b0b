"""data_prep/make_av_corpus.py: deterministic, disjoint splits, clips decode with sound and picture."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest


import make_av_corpus

SMALL = dict(classes=3, per_class={"pretrain": 2, "probe_train": 1, "probe_test": 1}, size=32, fps=8, seconds=2.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("av") / "corpus"
    meta = make_av_corpus.generate(out, seed=3, **SMALL)
    return out, meta


@pytest.mark.slow
def test_deterministic(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    make_av_corpus.generate(again, seed=3, **SMALL)
    assert make_av_corpus.tree_digest(out) == make_av_corpus.tree_digest(again)
    other = tmp_path / "other"
    make_av_corpus.generate(other, seed=4, **SMALL)
    assert make_av_corpus.tree_digest(out) != make_av_corpus.tree_digest(other)


def test_splits_disjoint_and_layout(corpus):
    out, meta = corpus
    lists = {s: (out / "splits" / f"{s}.txt").read_text().split() for s in make_av_corpus.SPLITS}
    assert [len(lists[s]) for s in make_av_corpus.SPLITS] == [6, 3, 3]
    everything = [p for s in lists.values() for p in s]
    assert len(set(everything)) == len(everything)
    for split, paths in lists.items():
        for rel in paths:
            assert rel.split("/")[0] == split and (out / rel).is_file()
            assert Path(rel).parent.name in {c["name"] for c in meta["classes"]}  # label = parent folder
    # Real recordings: each split uses its own (folds 1-2 / 3 / 4), never shared.
    used = {s: {c["recording"] for c in meta["clips"] if c["split"] == s} for s in make_av_corpus.SPLITS}
    assert not used["pretrain"] & used["probe_train"]
    assert not used["pretrain"] & used["probe_test"]
    assert not used["probe_train"] & used["probe_test"]
    for clip in meta["clips"]:
        assert clip["recording"].split("/")[0] == clip["label"]
    # Every class has its own (shape, motion, texture), attributes shared across classes.
    combos = [(c["shape"], c["motion"], c["texture"]) for c in meta["classes"]]
    assert len(set(combos)) == len(combos)
    assert json.loads((out / "corpus.json").read_text())["seed"] == 3


def test_clips_decode_with_audio_and_video(corpus):
    out, meta = corpus
    for clip in meta["clips"]:
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
             "stream=codec_type,nb_read_frames,width,height,duration,sample_rate", "-of", "json", str(out / clip["path"])],
            capture_output=True, text=True, check=True)
        streams = {s["codec_type"]: s for s in json.loads(probe.stdout)["streams"]}
        assert set(streams) == {"video", "audio"}
        video, audio = streams["video"], streams["audio"]
        assert int(video["nb_read_frames"]) == 16 and int(video["width"]) == 32 and int(video["height"]) == 32
        assert int(audio["sample_rate"]) == 16000
        assert abs(float(audio["duration"]) - 2.0) < 0.1
        # The sound is really there (not silence).
        pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out / clip["path"]), "-f", "s16le", "-ac", "1", "-"],
                             capture_output=True, check=True).stdout
        assert len(pcm) > 2 * 16000 * 1.9 and max(pcm) > 0


def test_class_selection_is_even_and_refuses_nonempty_output(tmp_path):
    names = make_av_corpus.select_classes(make_av_corpus.DEFAULT_SOUNDS, 8)
    assert len(names) == len(set(names)) == 8 and names == sorted(names)
    (tmp_path / "x").write_text("keep")
    with pytest.raises(SystemExit):
        make_av_corpus.generate(tmp_path, **SMALL)


def test_max_distractors_removes_only_the_distractors():
    """--max-distractors 0: the class object alone, every other nuisance of each clip unchanged."""
    rng_args = (make_av_corpus.class_specs(["a", "b"])[0], 32, 16)
    pool = [(s, m, t) for s in make_av_corpus.SHAPES for m in make_av_corpus.MOTIONS for t in make_av_corpus.TEXTURES]
    for index in range(4):
        full, full_meta = make_av_corpus.render_video(make_av_corpus.clip_rng(3, "pretrain", index), *rng_args, pool, 0.3)
        alone, alone_meta = make_av_corpus.render_video(make_av_corpus.clip_rng(3, "pretrain", index), *rng_args, pool,
                                                        0.3, max_distractors=0)
        assert full_meta["distractors"] >= 1 and alone_meta["distractors"] == 0
        assert {k: v for k, v in full_meta.items() if k != "distractors"} == \
               {k: v for k, v in alone_meta.items() if k != "distractors"}
        assert (full != alone).any()  # the distractors were in the picture, and are gone


def test_class_colour_moves_only_the_class_object_towards_its_colour():
    """--class-colour 1: the object takes its class's colour; off (0) the clip is unchanged, other nuisances too."""
    spec = make_av_corpus.ClassSpec("a", "square", "bounce", "solid")  # solid: the object is one flat colour
    pool = [(s, m, t) for s in make_av_corpus.SHAPES for m in make_av_corpus.MOTIONS for t in make_av_corpus.TEXTURES]
    red = make_av_corpus.class_colours(4)[0]
    assert red.tolist() == [1.0, 0.0, 0.0]
    for index in range(3):
        def render(cue):
            return make_av_corpus.render_video(make_av_corpus.clip_rng(5, "pretrain", index), spec, 32, 8, pool, 0.0,
                                               max_distractors=0, class_colour=red, colour_cue=cue)
        plain, plain_meta = make_av_corpus.render_video(make_av_corpus.clip_rng(5, "pretrain", index), spec, 32, 8,
                                                        pool, 0.0, max_distractors=0)
        off, off_meta = render(0.0)
        cued, cued_meta = render(1.0)
        assert (off == plain).all() and off_meta == plain_meta == cued_meta
        changed = np.abs(cued.astype(int) - off.astype(int)).max(axis=-1) > 40
        assert changed.any()
        obj = cued[changed].astype(float)  # object pixels: contrast >= 0.9 of pure red over the background
        assert (obj[:, 0] - obj[:, 1:].max(axis=1)).mean() > 0.6 * 255


def test_object_scale_grows_only_the_class_object():
    """--object-scale 2: twice the radius, about 4x the object's pixels; every other nuisance the same."""
    spec = make_av_corpus.ClassSpec("a", "square", "pulse", "solid")
    pool = [(s, m, t) for s in make_av_corpus.SHAPES for m in make_av_corpus.MOTIONS for t in make_av_corpus.TEXTURES]
    red = make_av_corpus.class_colours(4)[0]

    def object_pixels(scale):  # pixels the class object covers: where its colour (cue 0 vs 1) shows
        args = (make_av_corpus.clip_rng(7, "pretrain", 0), spec, 64, 4, pool, 0.0)
        off, meta = make_av_corpus.render_video(*args, max_distractors=0, class_colour=red, object_scale=scale)
        cued, _ = make_av_corpus.render_video(make_av_corpus.clip_rng(7, "pretrain", 0), *args[1:], max_distractors=0,
                                              class_colour=red, colour_cue=1.0, object_scale=scale)
        return (np.abs(cued.astype(int) - off.astype(int)).max(axis=-1) > 40).sum(), meta

    small, small_meta = object_pixels(1.0)
    large, large_meta = object_pixels(2.0)
    assert abs(large_meta.pop("radius") - 2 * small_meta.pop("radius")) <= 0.01
    assert large_meta == small_meta
    assert 2.5 * small < large < 5 * small
