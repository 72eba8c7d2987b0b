"""Evaluation suite (xkd/evaluation, eval/): metrics, protocols and data path on real files.

Real data: the bundled sound effects (data/sounds, 22 classes, audio-only shards made by the real
make_shards) and the sample clips (data/sample/av). Synthetic features only where a test plants a
known signal in them (planted-signal, C selection, averaging). The comparison of a pretrained
encoder with its random init is in test_eval_pretrained.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score

from eval_media import SOUND_FOLDS
from xkd.data import format as fmt
from xkd.data.verify_shards import verify_output
from xkd.engine.export import load_encoder
from xkd.evaluation import svm
from xkd.evaluation.clips import EvalClips, audio_windows, looped_indices, read_waveform, uniform_starts, video_windows
from xkd.evaluation.datasets import DatasetError, load_dataset, read_split_spec, resolve_splits
from xkd.evaluation.fc import FCConfig, train_fc
from xkd.engine.export import export_config
from xkd.evaluation.errors import EvalInputError
from xkd.evaluation.features import extract_features
from xkd.evaluation.finetune import (PRESETS, Classifier, FinetuneConfig, _consistent, finetune, param_groups,
                                     spec_masks, time_warp)
from xkd.evaluation.metrics import average_clips, average_precision, mean_average_precision, topk_accuracy
from xkd.evaluation.protocol import linear_clip_spec
from xkd.evaluation.report import render
from xkd.evaluation.results import EvalRecord

from media import full_decode


# ----------------------------------------------------------------------------- metrics


def test_average_precision_matches_sklearn():
    """Hand-computed case, then a tie-heavy random case against sklearn's average_precision_score."""
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3)
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((300, 12)), 1)  # one decimal: many tied scores
    targets = (rng.random((300, 12)) < 0.2).astype(int)
    targets[:, 5] = 0  # a class without positives: left out of the mAP
    for c in range(12):
        if c != 5:
            assert average_precision(scores[:, c], targets[:, c]) == pytest.approx(
                average_precision_score(targets[:, c], scores[:, c]), abs=1e-12)
    value, per_class = mean_average_precision(scores, targets)
    keep = [c for c in range(12) if c != 5]
    assert np.isnan(per_class[5])
    assert value == pytest.approx(average_precision_score(targets[:, keep], scores[:, keep], average="macro"))


def test_topk_accuracy():
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    labels = np.array([2, 0, 1])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)  # row 3: the 0.3 tie goes to class 0
    assert topk_accuracy(scores, labels, 3) == 1.0


def test_multi_clip_averaging_decides_the_item():
    """One clip far on the right side outweighs two clips slightly on the wrong side: the mean of the
    decision functions classifies the item correctly where a per-clip majority vote would not."""
    rng = np.random.default_rng(1)
    train = np.concatenate([rng.normal(-1, 0.1, (20, 3, 1)), rng.normal(1, 0.1, (20, 3, 1))])
    labels = np.repeat([0, 1], 20)
    test = np.array([[[5.0], [-0.5], [-0.5]]])
    config = svm.SVMConfig(c_grid=(1.0,), standardize=False)
    model, _ = svm._fit(train, labels, 1.0, config)
    per_clip = model.decision_function(test.reshape(-1, 1))
    assert (per_clip > 0).sum() == 1  # majority vote: class 0
    scores = svm.item_scores(model, test, 2)
    assert scores[0, 1] == pytest.approx(per_clip.mean())
    result = svm.evaluate_split("s", train, labels, test, np.array([1]), 2, config)
    assert result.top1 == 100.0
    assert average_clips(np.ones((2, 3, 4))).shape == (2, 4)


# ----------------------------------------------------------------------------- SVM protocol


def planted(n_classes=22, per_class=8, clips=10, dim=64, signal=3.0, seed=0):
    """Noise features plus a class code: (N, clips, D) and labels (N,)."""
    rng = np.random.default_rng(seed)
    codes = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    features = rng.normal(size=(len(labels), clips, dim)) + signal * codes[labels][:, None, :]
    return features.astype(np.float32), labels


def folds_of(labels, n_folds=4):
    fold = np.concatenate([np.arange(np.sum(labels == c)) % n_folds for c in np.unique(labels)])
    return [(np.nonzero(fold != f)[0], np.nonzero(fold == f)[0]) for f in range(n_folds)]


@pytest.mark.slow
def test_planted_signal_near_perfect_and_shuffled_labels_near_chance():
    features, labels = planted()
    test_features = features[:, :3]
    config = svm.SVMConfig()
    good = [svm.evaluate_split(f"f{i}", features[tr], labels[tr], test_features[te], labels[te], 22, config)
            for i, (tr, te) in enumerate(folds_of(labels))]
    shuffled_labels = np.random.default_rng(5).permutation(labels)
    bad = [svm.evaluate_split(f"f{i}", features[tr], shuffled_labels[tr], test_features[te], shuffled_labels[te], 22,
                              config) for i, (tr, te) in enumerate(folds_of(shuffled_labels))]
    good_top1, bad_top1 = svm.summarize(good)["top1"], svm.summarize(bad)["top1"]
    print(f"planted signal: top-1 {good_top1:.1f}%; shuffled labels: {bad_top1:.1f}% (chance {100 / 22:.1f}%)")
    assert good_top1 >= 98.0
    assert bad_top1 < 15.0  # chance is 4.5 %; 176 test items put the std of chance at ~1.6 %


def test_c_is_chosen_by_cross_validation_on_the_training_split():
    features, labels = planted(n_classes=6, per_class=12, clips=4, dim=32, signal=0.6, seed=3)
    features *= 0.1  # small features without standardisation: a small C underfits them
    (train, test), = [folds_of(labels, 3)[0]]
    config = svm.SVMConfig(standardize=False)
    cv = svm.cross_validate_c(features[train], labels[train], 6, config)
    result = svm.evaluate_split("s", features[train], labels[train], features[test][:, :3], labels[test], 6, config)
    assert result.C == svm.best_c(cv)
    assert result.selection_scores == {f"{c:g}": 100.0 * s for c, s in cv.items()}
    assert result.C >= 1e-2 and cv[result.C] > cv[1e-5] + 0.3  # the choice matters here
    # The test labels play no part in the choice.
    permuted = np.random.default_rng(0).permutation(labels[test])
    again = svm.evaluate_split("s", features[train], labels[train], features[test][:, :3], permuted, 6, config)
    assert again.C == result.C and again.selection_scores == result.selection_scores
    # Reference-code option: the scores are the test accuracies of each C.
    on_test = svm.evaluate_split("s", features[train], labels[train], features[test][:, :3], labels[test], 6,
                                 svm.SVMConfig(standardize=False, c_selection="test"))
    # Derived with scikit-learn alone: one LinearSVC per C on every training clip, an item's score the
    # mean of its 3 test clips' decision functions, top-1 = the argmax is the label.
    from sklearn.svm import LinearSVC

    x_train = features[train].reshape(-1, features.shape[-1])
    y_train = np.repeat(labels[train], features.shape[1])
    for c in config.c_grid:
        reference = LinearSVC(C=c, max_iter=config.max_iter, dual="auto", random_state=config.seed)
        reference.fit(x_train, y_train)
        clips = features[test][:, :3]
        decision = reference.decision_function(clips.reshape(-1, clips.shape[-1])).reshape(len(test), 3, -1)
        top1 = 100 * np.mean(reference.classes_[decision.mean(axis=1).argmax(axis=1)] == labels[test])
        assert on_test.selection_scores[f"{c:g}"] == pytest.approx(top1)
    assert on_test.c_selection == "test"


# ----------------------------------------------------------------------------- FC-tuning


def test_fc_tune_single_and_multi_label():
    features, labels = planted(n_classes=10, per_class=10, clips=4, dim=32, signal=2.0)
    train, test = folds_of(labels, 5)[0]
    config = FCConfig(epochs=30, batch_size=64, lr=1e-2, schedule="cosine", warmup_epochs=1)
    single = train_fc(features[train], labels[train], features[test][:, :3], labels[test], 10, False, config, "cpu")
    assert single.metrics["top1"] >= 95.0 and "top5" in single.metrics
    assert single.losses[-1] < single.losses[0]

    rng = np.random.default_rng(2)
    targets = (rng.random((200, 8)) < 0.25).astype(np.int64)
    targets[np.arange(200), rng.integers(0, 8, 200)] = 1  # at least one label each
    codes = rng.normal(size=(8, 32))
    multi = (rng.normal(size=(200, 4, 32)) + 2.0 * (targets @ codes)[:, None, :]).astype(np.float32)
    result = train_fc(multi[:150], targets[:150], multi[150:, :3], targets[150:], 8, True, config, "cpu")
    shuffled = train_fc(multi[:150], rng.permutation(targets[:150]), multi[150:, :3], targets[150:], 8, True,
                        config, "cpu")
    print(f"multi-label mAP planted {result.metrics['mAP']:.1f}, shuffled {shuffled.metrics['mAP']:.1f}")
    assert result.metrics["mAP"] >= 90.0
    assert shuffled.metrics["mAP"] < 60.0


# ----------------------------------------------------------------------------- data


def test_audio_only_shards_from_make_shards(sound_shards):
    """make_shards --no-video-policy audio-only: every clip packed without a video member, verified."""
    manifest = json.loads((sound_shards / fmt.MANIFEST_NAME).read_text())
    assert manifest["num_samples"] == 176 and manifest["num_skipped"] == 0
    assert manifest["fingerprint"]["no_video_policy"] == "audio-only"
    assert verify_output(sound_shards).ok
    dataset = load_dataset(sound_shards)
    assert dataset.num_classes == 22 and not dataset.multi_label
    for item in dataset.items:
        assert [m[0] for m in item.ref.members] == list(fmt.AUDIO_ONLY_EXTS)
        assert not item.has_video and item.has_audio and item.duration < 4.0
    meta = json.loads(dataset.items[0].ref.read(fmt.META_EXT))
    assert meta["has_video"] is False and meta["padded"] is True and meta["audio_rate"] == 16000


def test_short_audio_is_looped_to_the_window(sound_shards, random_tiny_export):
    dataset = load_dataset(sound_shards)
    item = min(dataset.items, key=lambda i: i.num_audio_samples)
    wave = read_waveform(item, 16000)
    spec = linear_clip_spec("audio")
    (window,) = audio_windows(item, uniform_starts(item.duration, 4.0, 1), spec, 16000)
    assert window.numel() == 64000 and wave.numel() < 64000
    n = wave.numel()
    assert torch.equal(window[:n], wave) and torch.equal(window[n:2 * n], wave)
    clips = EvalClips([item], spec, spec.views(export_config(random_tiny_export).views), 3)[0]
    assert clips.shape == (3, 1, 80, 448)
    assert torch.equal(clips[0], clips[2])  # a short item's test clips all start at 0


def test_uniform_test_clips_on_real_clips(sample_shards):
    """k test clips are uniformly spaced from the start to the end of the item, in both modalities."""
    dataset = load_dataset(sample_shards)
    dancer = next(i for i in dataset.items if i.source.endswith("dancer.avi"))
    starts = uniform_starts(dancer.duration, 4.0, 3)
    assert starts[0] == 0 and starts[-1] == pytest.approx(dancer.duration - 4.0)
    wave = read_waveform(dancer, 16000)
    for window, start in zip(audio_windows(dancer, starts, linear_clip_spec("audio"), 16000), starts):
        first = int(round(start * 16000))
        assert torch.equal(window, wave[first:first + 64000])
    intro = next(i for i in dataset.items if i.source.endswith("jwpIntro.mp4"))  # 46 frames
    video_spec = linear_clip_spec("video")
    frames = full_decode(intro.ref.read(fmt.VIDEO_EXT))
    windows = video_windows(intro, uniform_starts(intro.duration, 4.0, 3), video_spec)
    for window, first in zip(windows, (0, 7, 14)):
        assert torch.equal(window, frames[first:first + 32])
    short = next(i for i in dataset.items if i.source.endswith("single_face.mp4"))  # 19 frames: looped
    (looped,) = video_windows(short, np.array([0.0]), video_spec)
    all_frames = full_decode(short.ref.read(fmt.VIDEO_EXT))
    assert torch.equal(looped, all_frames[looped_indices(0, 32, len(all_frames))])


def test_split_formats(sound_shards, tmp_path):
    dataset = load_dataset(sound_shards, name="sounds")
    folds = resolve_splits(dataset, read_split_spec(f"esc50:{SOUND_FOLDS}"))
    assert [s.name for s in folds] == ["fold1", "fold2", "fold3", "fold4"]
    assert all(len(s.test) == 44 and len(s.train) == 132 and s.missing == 0 for s in folds)
    assert len(np.unique(np.concatenate([s.test for s in folds]))) == 176

    sources = sorted(item.source for item in dataset.items)
    ucf = tmp_path / "ucf"
    ucf.mkdir()
    (ucf / "trainlist01.txt").write_text("".join(f"{s} {i % 22 + 1}\n" for i, s in enumerate(sources[:100])))
    (ucf / "testlist01.txt").write_text("".join(f"{s}\n" for s in sources[100:]) + "missing/clip.ogg\n")
    (split,) = resolve_splits(dataset, read_split_spec(f"ucf101:{ucf}"))
    assert (split.name, len(split.train), len(split.test), split.missing) == ("split1", 100, 76, 1)

    hmdb = tmp_path / "hmdb"
    hmdb.mkdir()
    for c in ("cattle", "saw", "goat"):
        names = [s.split("/")[1] for s in sources if s.startswith(c + "/")]  # file names only, as HMDB51
        (hmdb / f"{c}_test_split2.txt").write_text("".join(f"{n} {1 + (i % 3 == 0)}\n" for i, n in enumerate(names))
                                                 + "unused.avi 0\n")
    (split,) = resolve_splits(dataset, read_split_spec(f"hmdb51:{hmdb}"))
    assert split.name == "split2" and len(split.train) + len(split.test) == 16

    fsd = tmp_path / "fsd"
    fsd.mkdir()
    stems = [s.split("/")[1].rsplit(".", 1)[0] for s in sources]
    (fsd / "dev.csv").write_text("fname,labels,mids,split\n" + "".join(
        f'{n},"x,y{i % 3}",m,{"train" if i % 5 else "val"}\n' for i, n in enumerate(stems[:120])))
    (fsd / "eval.csv").write_text("fname,labels,mids\n" + "".join(f'{n},"y{i % 3}",m\n' for i, n in
                                                               enumerate(stems[120:])))
    multi = load_dataset(sound_shards, labels=[fsd / "dev.csv", fsd / "eval.csv"])
    assert multi.multi_label and multi.classes == ["x", "y0", "y1", "y2"]
    (split,) = resolve_splits(multi, read_split_spec(f"fsd50k:{fsd}"))
    assert (len(split.train), len(split.test)) == (96, 56)
    assert multi.targets(split.test).shape == (56, 4)

    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "a_train.txt").write_text("\n".join(sources[:10]))
    (tmp_path / "lists" / "a_test.txt").write_text("\n".join(sources[:12]))
    with pytest.raises(DatasetError, match="in both train and test"):
        resolve_splits(dataset, read_split_spec(f"lists:{tmp_path / 'lists'}"))


# ----------------------------------------------------------------------------- features


def test_features_are_cached_and_reused(sound_shards, random_tiny_export, tmp_path):
    """A second request runs no forward pass: the cached file is read, not rewritten."""
    dataset = load_dataset(sound_shards, name="sounds")
    spec = linear_clip_spec("audio")
    encoder = load_encoder(random_tiny_export, "audio_teacher_encoder")
    calls = []
    encoder.register_forward_hook(lambda *_: calls.append(1))
    common = dict(mode="test", n_clips=3, cache_dir=tmp_path, progress=False, encoder=encoder,
                  indices=np.arange(20), batch_size=12)
    first = extract_features(random_tiny_export, "audio_teacher_encoder", dataset, spec, **common)
    assert first.forward_batches == len(calls) == 5 and first.features.shape == (20, 3, 64)
    stamp = first.path.stat().st_mtime_ns
    second = extract_features(random_tiny_export, "audio_teacher_encoder", dataset, spec, **common)
    assert len(calls) == 5 and second.from_cache and second.path == first.path
    assert first.path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.features, second.features)
    # The feature is the mean of the last-layer patch tokens of the encoder.
    clips = EvalClips([dataset.items[0]], spec, spec.views(export_config(random_tiny_export).views), 3)[0]
    with torch.no_grad():
        tokens = encoder.eval()(clips).tokens
    np.testing.assert_allclose(first.features[0], tokens[:, 1:].mean(1).numpy(), rtol=1e-5, atol=1e-6)
    # Another identity (training clips, another seed) is another file.
    train = extract_features(random_tiny_export, "audio_teacher_encoder", dataset, spec, **{
        **common, "mode": "train", "n_clips": 2, "seed": 1})
    assert train.path != first.path and train.forward_batches > 0


# ----------------------------------------------------------------------------- fine-tuning


def test_layer_decay_groups(random_tiny_export):
    model = Classifier(load_encoder(random_tiny_export, "audio_teacher_encoder"), 5, 0.5)
    groups = param_groups(model, 0.05, 0.5)
    depth = len(model.encoder.blocks)  # tiny: 2
    by_layer = {(g["layer"], g["weight_decay"] > 0): g for g in groups}
    assert by_layer[(depth + 1, True)]["lr_scale"] == 1.0  # head
    assert by_layer[(0, True)]["lr_scale"] == 0.5 ** (depth + 1)  # patch embedding
    assert all(p.ndim <= 1 or p.shape[0] == 1 for p in by_layer[(0, False)]["params"])  # CLS, positions, biases
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_spectrogram_augment_and_consistent_randaug():
    rng = np.random.default_rng(0)
    spec = torch.randn(1, 80, 448)
    warped = time_warp(spec, rng, 20)
    assert warped.shape == spec.shape and not torch.equal(warped, spec)
    masked = spec_masks(spec, rng, PRESETS["esc50"])
    assert (masked == 0).sum() > 0 and masked.shape == spec.shape
    from timm.data.auto_augment import rand_augment_transform

    transform = rand_augment_transform("rand-m9-mstd0.5-inc1", {"img_mean": (124, 116, 104)})
    frame = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out = _consistent(transform, [frame] * 4, seed=7)
    assert all(np.array_equal(np.asarray(out[0]), np.asarray(o)) for o in out[1:])


@pytest.mark.slow
def test_finetune_loss_decreases_tiny_audio(sound_shards, random_tiny_export):
    dataset = load_dataset(sound_shards, name="sounds")
    (split,) = resolve_splits(dataset, read_split_spec(f"esc50:{SOUND_FOLDS}"), ["fold1"])
    config = PRESETS["esc50"].replace(epochs=6, batch_size=16, lr=3e-3, warmup_epochs=0.0, num_workers=0)
    encoder = load_encoder(random_tiny_export, "audio_teacher_encoder")
    result = finetune(encoder, dataset, split, "audio", export_config(random_tiny_export).views, config,
                      progress=False)
    print(f"fine-tuning losses per epoch: {[round(x, 3) for x in result.epoch_losses]}, test {result.metrics}")
    assert len(result.epoch_losses) == 6 and result.engine == "single"
    assert result.epoch_losses[-1] < result.epoch_losses[0] - 0.1
    assert set(result.metrics) == {"top1", "top5"}


@pytest.mark.slow
def test_finetune_resumes_after_its_last_epoch_exactly(sound_shards, random_tiny_export, tmp_path):
    """An interrupted fine-tuning run given the same output continues after its last finished epoch
    and ends where an uninterrupted run ends (mixup and dropout on: their draws are seeded per epoch,
    workers persist); a different configuration refuses that state."""
    dataset = load_dataset(sound_shards, name="sounds")
    (split,) = resolve_splits(dataset, read_split_spec(f"esc50:{SOUND_FOLDS}"), ["fold1"])
    config = PRESETS["esc50"].replace(epochs=3, batch_size=16, lr=3e-3, warmup_epochs=1.0, num_workers=1,
                                      mixup=0.5, dropout=0.2)
    views = export_config(random_tiny_export).views

    def run(output, on_epoch=None, run_config=config):
        encoder = load_encoder(random_tiny_export, "audio_teacher_encoder")
        return finetune(encoder, dataset, split, "audio", views, run_config, output=output, progress=False,
                        on_epoch=on_epoch)

    straight = run(tmp_path / "straight")

    class Interrupted(Exception):
        pass

    def stop_after_two(epoch, loss):
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", stop_after_two)
    epochs_seen = []
    resumed = run(tmp_path / "resumed", lambda epoch, loss: epochs_seen.append(epoch))
    assert epochs_seen == [3]  # epochs 1 and 2 were not trained again
    assert resumed.epoch_losses == straight.epoch_losses and resumed.steps == straight.steps
    assert resumed.metrics == straight.metrics
    with pytest.raises(EvalInputError, match="another run .*config"):
        run(tmp_path / "resumed", run_config=config.replace(lr=1e-3))


def test_finetune_video_224_with_mixup_cutmix_randaug(sample_shards, random_tiny_export, tmp_path):
    """Video at 224 px (position table interpolated from the 64 px pretraining grid), RandAug,
    mixup/cutmix on 5-D clips, multi-clip test; the weights are saved."""
    dataset = load_dataset(sample_shards, name="sample_av")
    lists = tmp_path / "lists"
    lists.mkdir()
    sources = sorted(i.source for i in dataset.items)
    (lists / "train.txt").write_text("\n".join(sources[:6]))
    (lists / "test.txt").write_text("\n".join(sources[6:]))
    (split,) = resolve_splits(dataset, read_split_spec(f"lists:{lists}"))
    config = FinetuneConfig(epochs=1, batch_size=2, frames=8, warmup_epochs=0.0, num_workers=0, test_clips=2)
    encoder = load_encoder(random_tiny_export, "video_teacher_encoder")
    with torch.no_grad():
        assert encoder(torch.zeros(1, 3, 8, 224, 224)).grid == (2, 14, 14)
    result = finetune(encoder, dataset, split, "video", export_config(random_tiny_export).views, config,
                      output=tmp_path / "weights", progress=False)
    assert np.isfinite(result.epoch_losses[0]) and result.steps == 3
    # Scored on exactly the test list's items: top-1 is a whole number of them.
    correct = result.metrics["top1"] * len(sources[6:]) / 100
    assert correct == pytest.approx(round(correct)) and 0 <= round(correct) <= len(sources[6:])
    assert (tmp_path / "weights" / "finetuned.safetensors").is_file()


# ----------------------------------------------------------------------------- report


def test_report_table_puts_our_numbers_beside_the_paper():
    def record(protocol, dataset, top1, checkpoint="/runs/k400/export/step1"):
        return EvalRecord(protocol, dataset, "video", "teacher", checkpoint, "0" * 64,
                          [{"split": "split1", "metrics": {"top1": top1}}], {"top1": top1})

    text = render([record("linear_svm", "ucf101", 61.25), record("finetune", "UCF-101", 70.0),
                   record("linear_svm", "sounds", 42.0)])
    ours = [line for line in text.splitlines() if line.startswith("| ours")]
    assert len(ours) == 1 and "61.2 / 70.0" in ours[0] and "(teacher)" in ours[0]
    assert "| K400 (paper) | XKD | 83.8 / 94.1 | 57.4 / 69.0 |" in text
    assert "| linear_svm | sounds |" in text
