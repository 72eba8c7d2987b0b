"""make_shards against hostile or damaged surroundings, through the real command, ffmpeg and files.

* CSV rows whose path leaves --media-root are refused (``outside_media_root``), the run goes on.
* --output: someone else's files are never deleted (a foreign non-empty folder is refused; a
  resumed run deletes only its own temporaries); --output and --input must be apart; an
  --output that is a file, a damaged manifest.json or journal.jsonl give a one-line error.
* Dangling symlinks, symlink loops and fifos in --input are counted as skipped inputs.
* A SIGKILLed make_shards leaves no ffmpeg running.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xkd.data import format as fmt
from xkd.data import skip_reasons as sr
from xkd.data.inputs import read_audioset_csv, read_kinetics_csv

REPO = Path(__file__).resolve().parents[1]
SAMPLE_AV = REPO / "data" / "sample" / "av"
MAKE_SHARDS = REPO / "data_prep" / "make_shards.py"
QUICK = ["--no-progress", "--workers", "1"]


def make_shards(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MAKE_SHARDS), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)


def assert_usage_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit status 2, one ``make_shards: error:`` line naming ``words``, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("make_shards: error:")]
    assert all(word in line for word in words), (words, line)


def manifest_of(out: Path) -> dict:
    return json.loads((out / fmt.MANIFEST_NAME).read_text())


def skipped_of(out: Path) -> dict[str, str]:
    lines = (out / fmt.SKIPPED_NAME).read_text().splitlines()
    return {record["source"]: record["reason"] for record in map(json.loads, lines)}


@pytest.fixture
def text_input(tmp_path) -> Path:
    """An input folder with one text file: a full run in a second or two (ffprobe only, 0 samples)."""
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "readme.txt").write_text("not a video\n" * 10)
    return folder


# ----------------------------------------------------------------------------- item 2: --media-root

KINETICS_HEADER = "label,youtube_id,time_start,time_end,split\n"


def test_csv_rows_cannot_read_outside_the_media_root(tmp_path):
    """'..' and absolute paths from a row's fields are refused (the real clips they name stay
    unread); the rest of the CSV is used as before."""
    media, elsewhere = tmp_path / "media", tmp_path / "elsewhere"
    media.mkdir()
    elsewhere.mkdir()
    clip = SAMPLE_AV / "face" / "single_face.mp4"
    shutil.copy(clip, tmp_path / "secret_000000_000010.mp4")  # ../secret from the media root
    shutil.copy(clip, elsewhere / "abs_000000_000010.mp4")  # an absolute youtube_id
    rows = ["cat,../secret,0,10,train", f"cat,{elsewhere}/abs,0,10,train", "cat,gone,0,10,train"]
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(KINETICS_HEADER + "\n".join(rows) + "\n")

    out = tmp_path / "out"
    proc = make_shards("--list", csv_path, "--media-root", media, "--output", out, "--short-policy", "pad", *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert skipped_of(out) == {"../secret_000000_000010.mp4": sr.OUTSIDE_MEDIA_ROOT,
                               f"{elsewhere}/abs_000000_000010.mp4": sr.OUTSIDE_MEDIA_ROOT,
                               "gone_000000_000010.mp4": sr.MISSING_FILE}
    manifest = manifest_of(out)
    assert (manifest["num_inputs"], manifest["num_samples"], manifest["num_shards"]) == (3, 0, 0)


def test_label_and_audioset_fields_cannot_climb_out(tmp_path):
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    (tmp_path / "x_000001_000002.mp4").write_bytes(b"x")
    (tmp_path / "y_1.000.mkv").write_bytes(b"x")
    kinetics = tmp_path / "k.csv"
    kinetics.write_text(KINETICS_HEADER + "../..,x,1,2,train\nsub,../../x,1,2,train\n")
    items = read_kinetics_csv(kinetics, media, "{label_dir}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4")
    assert [(item.path, item.reason) for item in items] == [(None, sr.OUTSIDE_MEDIA_ROOT)] * 2
    assert "outside --media-root" in items[0].missing
    audioset = tmp_path / "a.csv"
    audioset.write_text('# YTID, start_seconds, end_seconds, positive_labels\n../y, 1.000, 2.000, "/m/x"\n')
    (item,) = read_audioset_csv(audioset, media)
    assert (item.source, item.path, item.reason) == ("../y_1.000.*", None, sr.OUTSIDE_MEDIA_ROOT)


# ----------------------------------------------------------------------------- item 4: other people's files

def test_a_foreign_folder_is_refused_and_left_intact(tmp_path, text_input):
    out = tmp_path / "out"
    (out / ".work" / "x").mkdir(parents=True)
    (out / "notes.tmp").write_text("mine")
    (out / ".work" / "x" / "y.txt").write_text("also mine")
    proc = make_shards("--input", text_input, "--output", out, *QUICK)
    assert_usage_error(proc, str(out), "not empty", "notes.tmp", "no journal.jsonl")
    assert (out / "notes.tmp").read_text() == "mine" and (out / ".work" / "x" / "y.txt").read_text() == "also mine"
    assert sorted(p.name for p in out.iterdir()) == [".work", "notes.tmp"]


def test_a_resumed_run_deletes_only_its_own_temporaries(tmp_path, text_input):
    out = tmp_path / "out"
    out.mkdir()  # an existing empty folder is fine
    assert make_shards("--input", text_input, "--output", out, *QUICK).returncode == 0
    # As if killed after the journal's end entry, before the manifest: a resumable run, holding
    # the tool's leftovers and (dropped in meanwhile) the user's own files.
    (out / fmt.MANIFEST_NAME).unlink()
    ours = [out / "train-000000.tar.tmp", out / "train-000000.idx.tmp", out / "manifest.json.tmp",
            out / ".make_shards.work" / "000000000" / "clip.webm"]
    theirs = [out / "notes.tmp", out / ".work" / "x" / "y.txt", out / "other-000000.tar.tmp", out / "train.tmp"]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(path.name)
    proc = make_shards("--input", text_input, "--output", out, *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert all(path.read_text() == path.name for path in theirs)
    assert not any(path.exists() for path in ours) and not (out / ".make_shards.work").exists()
    assert manifest_of(out)["num_inputs"] == 1


# ----------------------------------------------------------------------------- item 5: --output vs --input

def test_output_and_input_must_be_apart(tmp_path, text_input):
    same = make_shards("--input", text_input, "--output", text_input, *QUICK)
    assert_usage_error(same, "--output", "same folder as --input")
    inside = make_shards("--input", text_input, "--output", text_input / "shards", *QUICK)
    assert_usage_error(inside, "--output", "inside --input")
    around = make_shards("--input", text_input, "--output", text_input.parent, *QUICK)
    assert_usage_error(around, "--input", "inside --output")
    assert sorted(p.name for p in text_input.iterdir()) == ["readme.txt"]  # nothing written there


# ----------------------------------------------------------------------------- item 6: symlinks

def test_dangling_symlinks_loops_and_fifos_are_counted(tmp_path):
    """Every name found in --input is either packed or a skipped.jsonl line (kept + skipped == found)."""
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    shutil.copy(SAMPLE_AV / "face" / "single_face.mp4", root / "a" / "clip.mp4")
    (root / "a" / "dangling.mp4").symlink_to("nowhere.mp4")
    (root / "a" / "self.mp4").symlink_to("self.mp4")
    (root / "b" / "ping.mp4").symlink_to("pong.mp4")
    (root / "b" / "pong.mp4").symlink_to("ping.mp4")
    os.mkfifo(root / "b" / "pipe.mp4")  # must be reported, never opened (a read would block)
    found = sum(len(names) for _, _, names in os.walk(root))
    assert found == 6

    out = tmp_path / "out"
    proc = make_shards("--input", root, "--output", out, "--short-policy", "pad", *QUICK, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert skipped_of(out) == {"a/dangling.mp4": sr.MISSING_FILE, "a/self.mp4": sr.SYMLINK_LOOP,
                               "b/ping.mp4": sr.SYMLINK_LOOP, "b/pong.mp4": sr.SYMLINK_LOOP,
                               "b/pipe.mp4": sr.NOT_MEDIA}
    manifest = manifest_of(out)
    assert manifest["num_inputs"] == found == manifest["num_samples"] + manifest["num_skipped"]
    assert manifest["num_samples"] == 1
    assert "1 samples in 1 shards, 5 skipped" in proc.stderr and f"of {found} inputs" in proc.stderr


# ----------------------------------------------------------------------------- item 7: SIGKILL

def session_processes(sid: int) -> dict[int, str]:
    """Live (not zombie) processes of session ``sid``: pid -> command line."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state, ppid, pgrp, session, ...
            found[int(stat.parent.name)] = cmdline
    return found


def test_sigkill_leaves_no_ffmpeg_running(tmp_path):
    """Kill only the make_shards process while its workers transcode long real clips: within a few
    seconds nothing it started (workers, ffmpeg) is alive, and no new ffmpeg appeared."""
    root = tmp_path / "in" / "music"
    root.mkdir(parents=True)
    for n in range(2):  # ~3 minutes of a real clip each: ffmpeg runs far longer than the test waits
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-stream_loop", "30", "-i",
                        str(SAMPLE_AV / "speech" / "jwpIntro.mp4"), "-c", "copy", str(root / f"long{n}.mp4")],
                       check=True)
    cmd = [sys.executable, str(MAKE_SHARDS), "--input", str(root.parent), "--output", str(tmp_path / "out"),
           "--no-progress", "--workers", "2"]
    # Its own session: every descendant is found by session id, even after its parent died.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not any(f" -i {root}/long" in c for c in session_processes(proc.pid).values()):
            assert proc.poll() is None and time.monotonic() < deadline, "no ffmpeg transcode started"
            time.sleep(0.05)
        before = session_processes(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # make_shards only, not its process group
        proc.wait()
        deadline = time.monotonic() + 5
        while (alive := session_processes(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive, f"still running after make_shards was killed: {alive} (before the kill: {before})"
    finally:
        for pid in session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- item 10: damaged bookkeeping

def test_output_that_is_a_file(tmp_path, text_input):
    target = tmp_path / "shards"
    target.write_text("a file")
    assert_usage_error(make_shards("--input", text_input, "--output", target, *QUICK), str(target), "not a folder")
    assert_usage_error(make_shards("--output", target, "--verify"), str(target), "not a folder")
    assert target.read_text() == "a file"


@pytest.fixture
def finished(tmp_path, text_input) -> Path:
    out = tmp_path / "finished"
    proc = make_shards("--input", text_input, "--output", out, *QUICK)
    assert proc.returncode == 0, proc.stderr
    return out


MANIFEST_DAMAGE = {
    "garbage": lambda m: b"\xff\xfe\x00\x81 not json",
    "a list": lambda m: b"[1, 2]",
    "no num_samples": lambda m: json.dumps({k: v for k, v in m.items() if k != "num_samples"}).encode(),
    "shards not a list": lambda m: json.dumps({**m, "shards": {"a": 1}}).encode(),
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_damaged_manifest_is_a_clear_error(finished, text_input, damage):
    path = finished / fmt.MANIFEST_NAME
    path.write_bytes(MANIFEST_DAMAGE[damage](json.loads(path.read_text())))
    assert_usage_error(make_shards("--input", text_input, "--output", finished, *QUICK), str(path))
    verify = make_shards("--output", finished, "--verify")  # --verify alone: a problem found, exit 1
    assert verify.returncode == 1 and "verify FAILED" in verify.stdout and str(path) in verify.stdout, verify
    assert "Traceback" not in verify.stderr


JOURNAL_DAMAGE = {  # lines of a good journal -> damaged bytes, and what the error names
    "garbage mid-file": (lambda lines: lines[0] + b"\n\xff\xfe\x81garbage\n" + b"\n".join(lines[1:]), "line 2"),
    "first line a list": (lambda lines: b"[1, 2]\n" + b"\n".join(lines[1:]), "line 1"),
    "no fingerprint": (lambda lines: b'{"type":"start"}\n' + b"\n".join(lines[1:]), "fingerprint"),
    "end without next_input": (lambda lines: lines[0] + b'\n{"type":"end","skipped":[]}\n', "next_input"),
    "shard named ../x": (lambda lines: lines[0] + b'\n{"type":"shard","next_input":0,"skipped":[],"shard":{'
                         b'"name":"../x.tar","index_file":"x.idx","samples":1,"bytes":1,"sha256":"",'
                         b'"keys_sha256":""}}\n', "'../x.tar'"),
}


@pytest.mark.parametrize("damage", sorted(JOURNAL_DAMAGE))
def test_damaged_journal_is_a_clear_error(finished, text_input, damage):
    (finished / fmt.MANIFEST_NAME).unlink()  # interrupted before the manifest: the journal decides
    journal = finished / fmt.JOURNAL_NAME
    change, named = JOURNAL_DAMAGE[damage]
    journal.write_bytes(change(journal.read_bytes().splitlines()))
    assert_usage_error(make_shards("--input", text_input, "--output", finished, *QUICK), str(journal), named)


def test_a_torn_last_journal_line_is_still_dropped(finished, text_input):
    (finished / fmt.MANIFEST_NAME).unlink()
    with open(finished / fmt.JOURNAL_NAME, "ab") as fh:
        fh.write(b'{"type":"shard","shard":{"na\xff')  # a crash mid-write, even inside a character
    proc = make_shards("--input", text_input, "--output", finished, *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert manifest_of(finished)["num_skipped"] == 1
