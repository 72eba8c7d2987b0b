"""Inputs of make_shards: folder scan, Kinetics CSV and AudioSet CSV -> files and labels."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from xkd.data import format as fmt
from xkd.data.build_shards import ordered_inputs
from xkd.data.inputs import (InputError, detect_csv_kind, label_map, read_audioset_csv, read_csv_inputs,
                             read_kinetics_csv, scan_folder)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_AV = REPO / "data" / "sample" / "av"
MAKE_SHARDS = REPO / "data_prep" / "make_shards.py"

KINETICS_CSV = """label,youtube_id,time_start,time_end,split
abseiling,--33Lscn6sk,4,14,train
"air drumming",-0ZQ0wUUbXU,0,10,train
abseiling,missing0001,30,40,train
"""

AUDIOSET_CSV = """# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=3, num_segs=3, num_unique_labels=4, num_positive_labels=5
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
--ZhevVpy1s, 50.000, 60.000, "/m/012xff"
--aE2O5G5WE, 0.000, 10.000, "/m/03fwl,/m/04rlf,/m/09x0r"
"""


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_folder_labels_and_order(tmp_path):
    touch(tmp_path / "b_label" / "z.mp4")
    touch(tmp_path / "a_label" / "sub" / "y.mp4")
    touch(tmp_path / "top.mp4")
    touch(tmp_path / ".hidden" / "x.mp4")
    touch(tmp_path / "a_label" / ".part.mp4")
    items = scan_folder(tmp_path)
    assert [(i.source, i.labels) for i in items] == [
        ("a_label/sub/y.mp4", ("sub",)), ("b_label/z.mp4", ("b_label",)), ("top.mp4", ())]
    assert label_map(items) == {"b_label": 0, "sub": 1}
    with pytest.raises(InputError, match="not a directory"):
        scan_folder(tmp_path / "nope")


def test_shuffle_is_seeded_and_independent_of_listing_order(tmp_path):
    for n in range(20):
        touch(tmp_path / "c" / f"{n:02d}.mp4")
    items = scan_folder(tmp_path)
    first = [i.source for i in ordered_inputs(items, seed=3)]
    assert first == [i.source for i in ordered_inputs(list(reversed(items)), seed=3)]
    assert first != [i.source for i in ordered_inputs(items, seed=4)]
    assert sorted(first) == [i.source for i in items]


def test_kinetics_csv_maps_rows_to_files(tmp_path):
    csv_path = touch(tmp_path / "train.csv", KINETICS_CSV.encode())
    media = tmp_path / "media"
    touch(media / "--33Lscn6sk_000004_000014.mp4")
    touch(media / "-0ZQ0wUUbXU_000000_000010.mp4")
    assert detect_csv_kind(csv_path) == "kinetics"
    items = read_kinetics_csv(csv_path, media)
    assert [(i.source, i.labels, i.path is not None) for i in items] == [
        ("--33Lscn6sk_000004_000014.mp4", ("abseiling",), True),
        ("-0ZQ0wUUbXU_000000_000010.mp4", ("air drumming",), True),
        ("missing0001_000030_000040.mp4", ("abseiling",), False)]
    assert "no file" in items[2].missing and str(media) in items[2].missing
    # Per-class folders with the label_dir placeholder.
    touch(media / "air_drumming" / "-0ZQ0wUUbXU_000000_000010.mp4")
    items = read_kinetics_csv(csv_path, media, "{label_dir}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4")
    assert items[1].source == "air_drumming/-0ZQ0wUUbXU_000000_000010.mp4" and items[0].path is None
    with pytest.raises(InputError, match="placeholders available"):
        read_kinetics_csv(csv_path, media, "{ytid}.mp4")


def test_audioset_csv_maps_rows_to_files(tmp_path):
    csv_path = touch(tmp_path / "balanced_train_segments.csv", AUDIOSET_CSV.encode())
    media = tmp_path / "media"
    touch(media / "--PJHxphWEs_30.000.mkv")
    touch(media / "--aE2O5G5WE_0.000.webm")
    touch(media / "--aE2O5G5WE_0.000.wav")  # two matches: the first in sorted order wins
    assert detect_csv_kind(csv_path) == "audioset"
    items = read_audioset_csv(csv_path, media)
    assert [(i.source, i.labels) for i in items] == [
        ("--PJHxphWEs_30.000.mkv", ("/m/09x0r", "/t/dd00088")),
        ("--ZhevVpy1s_50.000.*", ("/m/012xff",)),
        ("--aE2O5G5WE_0.000.wav", ("/m/03fwl", "/m/04rlf", "/m/09x0r"))]
    assert items[1].path is None
    assert label_map(items) == {"/m/012xff": 0, "/m/03fwl": 1, "/m/04rlf": 2, "/m/09x0r": 3, "/t/dd00088": 4}
    kind, same = read_csv_inputs(csv_path, media)
    assert kind == "audioset" and same == items


def test_unknown_csv_is_rejected(tmp_path):
    bad = touch(tmp_path / "x.csv", b"path,label\na.mp4,cat\n")
    with pytest.raises(InputError, match="neither a Kinetics header"):
        detect_csv_kind(bad)


def _run(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(MAKE_SHARDS), *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_csv_inputs_end_to_end(tmp_path):
    """Both CSV kinds through make_shards: present rows become samples, missing ones skipped lines."""
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(SAMPLE_AV / "speech" / "jwpIntro.mp4", media / "--33Lscn6sk_000004_000014.mp4")
    shutil.copy(SAMPLE_AV / "speech" / "jwpIntro.mp4", media / "--PJHxphWEs_30.000.mp4")
    kinetics = touch(tmp_path / "k.csv", KINETICS_CSV.encode())
    audioset = touch(tmp_path / "a.csv", AUDIOSET_CSV.encode())

    out = tmp_path / "k400"
    _run("--list", kinetics, "--media-root", media, "--output", out, "--workers", "2", "--no-progress", "--verify")
    manifest = json.loads((out / fmt.MANIFEST_NAME).read_text())
    skipped = [json.loads(line) for line in (out / fmt.SKIPPED_NAME).read_text().splitlines()]
    assert manifest["num_inputs"] == 3 and manifest["num_samples"] == 1
    assert sorted((r["source"], r["reason"]) for r in skipped) == [
        ("-0ZQ0wUUbXU_000000_000010.mp4", "missing_file"), ("missing0001_000030_000040.mp4", "missing_file")]
    assert manifest["label_map"] == {"abseiling": 0, "air drumming": 1}
    assert manifest["args"]["input_kind"] == "kinetics"

    out = tmp_path / "audioset"
    _run("--list", audioset, "--media-root", media, "--output", out, "--workers", "2", "--no-progress", "--verify",
         "--split", "balanced")
    manifest = json.loads((out / fmt.MANIFEST_NAME).read_text())
    assert manifest["num_samples"] == 1 and manifest["num_skipped"] == 2
    assert manifest["shards"][0]["name"] == "balanced-000000.tar"
    with tarfile.open(out / "balanced-000000.tar") as tar:
        meta = json.loads(next(tar.extractfile(m) for m in tar if m.name.endswith(".json")).read())
    assert meta["source"] == "--PJHxphWEs_30.000.mp4" and meta["labels"] == ["/m/09x0r", "/t/dd00088"]
    assert meta["label_indices"] == [manifest["label_map"]["/m/09x0r"], manifest["label_map"]["/t/dd00088"]]


def test_parse_size():
    from make_shards import parse_size

    assert parse_size("1GB") == 10**9 and parse_size("512MiB") == 512 * 2**20 and parse_size("1234") == 1234
    assert parse_size("1.5 gb") == 1_500_000_000
    with pytest.raises(Exception, match="expected a size"):
        parse_size("lots")


def _fake_samples(tmp_path: Path, sizes: list[int]):
    """PreparedSamples with random media bytes (the packer never looks inside them)."""
    import random

    from xkd.data.prepare_clip import PreparedSample

    rng = random.Random(0)
    for n, size in enumerate(sizes):
        work = tmp_path / "work" / str(n)
        video, audio = touch(work / "v.webm", rng.randbytes(size)), touch(work / "a.flac", rng.randbytes(size // 7))
        yield PreparedSample(fmt.sample_key(f"clip{n}.mp4"), f"clip{n}.mp4", video, audio, b'{"k":1}',
                             b"\x93NUMPY" + bytes(n), work)


def test_shard_size_prediction_is_exact(tmp_path):
    from xkd.data.shard_writer import ShardWriter

    writer = ShardWriter(tmp_path, "x-000000.tar")
    for sample in _fake_samples(tmp_path, [5_000, 12_345, 511, 30_000]):
        predicted = writer.size_with(sample)
        writer.add(sample)
    record = writer.finish()
    assert record.bytes == predicted == (tmp_path / "x-000000.tar").stat().st_size
    assert not (tmp_path / "x-000000.tar.tmp").exists() and (tmp_path / "x-000000.idx").is_file()


def test_shard_bytes_limit(tmp_path):
    """--shard-bytes: a shard closes before it would pass the limit (a bigger sample stands alone)."""
    import random

    from xkd.data.build_shards import ShardJob, ShardPacker
    from xkd.data.journal import Journal

    rng = random.Random(1)
    sizes = [rng.randrange(3_000, 40_000) for _ in range(9)] + [150_000]
    out = tmp_path / "out"
    out.mkdir()
    job = ShardJob(output=out, inputs=[], input_kind="folder", input_root=str(tmp_path), shard_size=100,
                   shard_bytes=100_000)
    journal = Journal(out)
    packer = ShardPacker(job, journal, journal.start({"test": True}))
    keys = []
    for n, sample in enumerate(_fake_samples(tmp_path, sizes)):
        keys.append(sample.key)
        packer.add(n, sample)
        assert not sample.workdir.exists()
    packer.finish(len(sizes))
    state = journal.load()
    shards = [entry["shard"] for entry in state.shards]
    assert len(shards) > 2 and sum(s["samples"] for s in shards) == len(sizes)
    assert state.end["next_input"] == len(sizes)
    for shard in shards:
        assert (out / shard["name"]).stat().st_size == shard["bytes"]
        assert shard["bytes"] <= 100_000 or shard["samples"] == 1
        assert (out / shard["index_file"]).read_text().startswith(f"v1.2 {shard['samples']}\n")
    assert shards[-1]["samples"] == 1 and shards[-1]["bytes"] > 100_000
    packed = []
    for shard in shards:
        with tarfile.open(out / shard["name"]) as tar:
            packed += list(dict.fromkeys(m.name.split(".")[0] for m in tar))
    assert packed == keys


def test_help_lists_every_skip_reason():
    from xkd.data.skip_reasons import ALL_REASONS

    text = subprocess.run([sys.executable, str(MAKE_SHARDS), "--help"], capture_output=True, text=True,
                          check=True).stdout
    assert all(reason in text for reason in ALL_REASONS)
