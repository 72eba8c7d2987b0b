"""Build a split of WebDataset shards from a list of inputs: the engine behind ``data_prep/make_shards.py``.

Order: inputs sorted by source path, then shuffled with ``seed``. Clips are transcoded by a
process pool (any number of workers gives the same result) and packed *in that order* by
this process: a shard closes after ``shard_size`` samples or before it would pass
``shard_bytes``. After each shard is renamed into place the journal records it, so a rerun
with the same arguments after a crash keeps the finished shards and continues at the first
unfinished input; the final shards are then byte-identical to an uninterrupted run's.
``skipped.jsonl`` and, last, ``manifest.json`` are written when every input is done.

The output folder is new, empty or one of this tool's runs: only then is anything in it
deleted, and only the tool's own files (shards after the journal's last entry, its ``.tmp``
files, the work folder the journal records). A folder with other files is refused.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import re
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from xkd.data import format as fmt
from xkd.data import skip_reasons as sr
from xkd.data.inputs import InputItem, label_map
from xkd.data.journal import Journal, JournalError, JournalState
from xkd.data.manifest import ManifestError, ffmpeg_version, read_manifest, tool_versions, write_manifest
from xkd.data.prepare_clip import ClipPolicy, PreparedSample, prepare_clip
from xkd.data.prepared_clips import PreparedClips
from xkd.data.probe import die_with_parent, kill_tools
from xkd.atomic_files import TMP_SUFFIX, atomic_write_bytes
from xkd.data.shard_writer import ShardWriter, write_dali_index
from xkd.data.transcode import CONTAINERS, LEGACY_KEYFRAME_INTERVAL, TranscodeSettings

# Per-clip transcode folders, inside the output (same file system). A name of this tool's own,
# recorded in the journal: a rerun deletes it only when the journal says it is this run's.
WORK_DIR_NAME = ".make_shards.work"
LOOKAHEAD_PER_WORKER = 4  # clips queued per worker ahead of the packing position

# Fingerprint key -> the command-line option it comes from (for the refusal message).
FINGERPRINT_OPTIONS = {
    "split": "--split", "shard_size": "--shard-size", "shard_bytes": "--shard-bytes", "fps": "--fps",
    "short_side": "--short-side", "audio_rate": "--audio-rate", "video_codec": "--video-codec",
    "seed": "--seed", "min_duration": "--min-duration", "short_policy": "--short-policy",
    "no_audio_policy": "--no-audio-policy", "no_video_policy": "--no-video-policy", "input_kind": "--input/--list",
    "filename_pattern": "--filename-pattern", "ffmpeg": "the ffmpeg version", "format_version": "the format version",
    "keyframe_interval": "--keyframe-interval",
}
# Fingerprint keys added later -> the value every run recorded before them had: an older journal or
# manifest without the key is compared as if it had that value (resumable only with that setting).
LEGACY_FINGERPRINT_VALUES = {"keyframe_interval": LEGACY_KEYFRAME_INTERVAL}


class OutputRefused(RuntimeError):
    """``--output`` cannot be used: not a folder, someone else's files, or this tool's
    bookkeeping there does not read (the message names the file and what was expected)."""


class ResumeRefused(OutputRefused):
    """The output folder holds a run that this one must not continue or overwrite."""


@dataclass
class ShardJob:
    """Everything that decides a build (``workers`` and ``progress`` do not change the bytes)."""

    output: Path
    inputs: list[InputItem]
    input_kind: str  # "folder" | "kinetics" | "audioset"
    input_root: str  # the folder or media root, for the record
    list_file: str | None = None
    filename_pattern: str | None = None
    split: str = "train"
    shard_size: int = 1000
    shard_bytes: int | None = None
    seed: int = 0
    settings: TranscodeSettings = field(default_factory=TranscodeSettings)
    policy: ClipPolicy = field(default_factory=ClipPolicy)
    workers: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.split):
            raise ValueError(f"split name {self.split!r}: expected letters, digits, '_' or '-'")
        if self.shard_size < 1:
            raise ValueError(f"shard size {self.shard_size}: expected at least 1 sample")
        if self.shard_bytes is not None and self.shard_bytes < 1:
            raise ValueError(f"shard bytes {self.shard_bytes}: expected a positive size")
        if self.workers < 1:
            raise ValueError(f"workers {self.workers}: expected at least 1")


@dataclass
class BuildSummary:
    output: Path
    num_inputs: int
    num_samples: int
    num_skipped: int
    num_shards: int
    resumed_shards: int = 0
    already_complete: bool = False
    skipped_by_reason: dict[str, int] = field(default_factory=dict)


def ordered_inputs(items: list[InputItem], seed: int) -> list[InputItem]:
    """Sorted by source path, then shuffled with ``random.Random(seed)`` (stable across platforms)."""
    ordered = sorted(items, key=lambda item: item.source)
    random.Random(seed).shuffle(ordered)
    return ordered


def inputs_digest(items: list[InputItem]) -> str:
    """sha256 over (source, size, labels) of the ordered inputs: changes when the inputs do."""
    digest = hashlib.sha256()
    for item in items:
        size = item.path.stat().st_size if item.path is not None and item.path.is_file() else -1
        digest.update(f"{item.source}\t{size}\t{'|'.join(item.labels)}\n".encode("utf-8"))
    return digest.hexdigest()


def job_fingerprint(job: ShardJob, ordered: list[InputItem]) -> dict:
    """What must match for a rerun to continue an interrupted one."""
    return {
        "format_version": fmt.FORMAT_VERSION, "split": job.split, "input_kind": job.input_kind,
        "filename_pattern": job.filename_pattern, "num_inputs": len(ordered), "inputs_sha256": inputs_digest(ordered),
        "shard_size": job.shard_size, "shard_bytes": job.shard_bytes, "seed": job.seed,
        "fps": job.settings.fps, "short_side": job.settings.short_side, "audio_rate": job.settings.audio_rate,
        "video_codec": job.settings.video_codec, "keyframe_interval": job.settings.keyframe_interval,
        "min_duration": job.policy.min_duration,
        "short_policy": job.policy.short_policy, "no_audio_policy": job.policy.no_audio_policy,
        "ffmpeg": ffmpeg_version(),
        # Only when set: splits built before --no-video-policy existed (always "skip") stay resumable.
        **({"no_video_policy": job.policy.no_video_policy} if job.policy.no_video_policy != "skip" else {}),
    }


def fingerprint_differences(old: dict, new: dict) -> list[str]:
    """Readable list of what differs between two fingerprints (``old`` read back from a journal or
    manifest; the keys it predates count with their ``LEGACY_FINGERPRINT_VALUES``)."""
    old = {**LEGACY_FINGERPRINT_VALUES, **old}
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "inputs_sha256":
            if old.get("num_inputs") == new.get("num_inputs"):
                out.append("the input files changed (same count, different paths, sizes or labels)")
        elif key == "num_inputs":
            out.append(f"the number of inputs: {old.get(key)} then, {new.get(key)} now")
        else:
            out.append(f"{FINGERPRINT_OPTIONS.get(key, key)}: {old.get(key)!r} then, {new.get(key)!r} now")
    return out


def _watch_parent(parent_pid: int) -> None:
    """Worker-side fallback where the kernel's death signal is missing (not Linux): when the packing
    process is gone, kill the running ffmpeg and exit, instead of lingering."""
    while True:
        if os.getppid() != parent_pid:
            kill_tools()
            os._exit(1)
        time.sleep(1.0)


def _init_worker(parent_pid: int) -> None:
    """A worker dies with the packing process (also when that is SIGKILLed), and its ffmpeg with it
    (``run_tool``): no transcode outlives make_shards, and no new one starts after it died."""
    die_with_parent(parent_pid)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _shard_files(output: Path, split: str) -> list[Path]:
    pattern = re.compile(rf"{re.escape(split)}-\d{{6}}\.(tar|idx)")
    return sorted(p for p in output.iterdir() if pattern.fullmatch(p.name))


def _our_temporaries(output: Path, split: str) -> list[Path]:
    """This tool's temporary files in ``output``: ``<split>-NNNNNN.tar.tmp`` / ``.idx.tmp`` and the
    atomic-write temporaries of the journal, the skipped list and the manifest."""
    names = {name + TMP_SUFFIX for name in (fmt.JOURNAL_NAME, fmt.SKIPPED_NAME, fmt.MANIFEST_NAME)}
    pattern = re.compile(rf"{re.escape(split)}-\d{{6}}\.(tar|idx){re.escape(TMP_SUFFIX)}")
    return sorted(p for p in output.iterdir() if p.name in names or pattern.fullmatch(p.name))


def _make_output_folder(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise OutputRefused(f"--output {output}: exists and is not a folder; expected a new or empty folder "
                            "(or the folder of an earlier run to resume)")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputRefused(f"--output {output}: cannot create the folder ({err.strerror or err})") from None


def _check_finished(job: ShardJob, journal: Journal, fingerprint: dict) -> None:
    """A finished split is in ``job.output``: refuse unless it was built with the same arguments."""
    try:
        manifest = read_manifest(job.output)
    except ManifestError as err:
        remedy = (f"delete that {fmt.MANIFEST_NAME} to finish the split again from its {fmt.JOURNAL_NAME}"
                  if journal.exists() else "delete the folder and rebuild")
        raise ResumeRefused(f"{err}. Not a split this tool can confirm or continue: {remedy}, "
                            "or use another --output.") from None
    diffs = fingerprint_differences(manifest["fingerprint"], fingerprint)
    if diffs:
        raise ResumeRefused(f"{job.output} already holds a finished split built with other arguments: "
                            + "; ".join(diffs) + ". Use another --output or delete that one.")


def _load_journal(job: ShardJob, journal: Journal, fingerprint: dict) -> JournalState:
    """The interrupted run's state, checked against this run's arguments and the files on disk."""
    output = job.output
    try:
        state = journal.load()
    except JournalError as err:
        raise ResumeRefused(f"{err}. The interrupted run in {output} cannot be resumed: delete the folder "
                            "and rebuild, or use another --output.") from None
    diffs = fingerprint_differences(state.fingerprint, fingerprint)
    if diffs:
        raise ResumeRefused(f"refusing to resume the interrupted run in {output}: it was started with "
                            "different arguments: " + "; ".join(diffs)
                            + ". Rerun with the original arguments, or use another --output.")
    _check_shard_entries(job, journal, state)
    if state.work_dir is None:  # a journal from before work folders were recorded: adopt ours
        if (output / WORK_DIR_NAME).exists():
            raise ResumeRefused(f"{output / WORK_DIR_NAME}: not recorded in {journal.path}, so not ours to "
                                "delete or reuse; move it away and rerun.")
        state.work_dir = WORK_DIR_NAME
    kept = []
    for entry in state.shards:  # keep the prefix of shards still on disk, intact in size
        shard = output / entry["shard"]["name"]
        if not shard.is_file() or shard.stat().st_size != entry["shard"]["bytes"]:
            break
        if not (output / entry["shard"]["index_file"]).is_file():
            write_dali_index(shard, output / entry["shard"]["index_file"])
        kept.append(entry)
    if len(kept) < len(state.shards):
        state.end = None
    state.shards = kept
    journal.rewrite(state)  # also drops a torn last line
    return state


def _check_shard_entries(job: ShardJob, journal: Journal, state: JournalState) -> None:
    """The journal's shards are this split's, in order (their names are joined to the output
    folder and their files may be deleted), and none claims more inputs than there are."""
    for number, entry in enumerate(state.shards):
        expected = fmt.shard_name(job.split, number)
        names = (entry["shard"]["name"], entry["shard"]["index_file"])
        if names != (expected, fmt.index_name(expected)) or entry["next_input"] > len(job.inputs):
            raise ResumeRefused(f"{journal.path}: shard entry {number + 1} ({names[0]!r}, next input "
                                f"{entry['next_input']}) does not follow this split ({expected!r}, at most "
                                f"{len(job.inputs)} inputs): the journal is damaged; delete the folder and rebuild.")


def _start_journal(job: ShardJob, journal: Journal, fingerprint: dict) -> JournalState:
    """A new run: the output folder must be empty (nothing in it is ours to delete)."""
    first_write = fmt.JOURNAL_NAME + TMP_SUFFIX  # only a crash inside journal.start leaves this
    foreign = sorted(p.name for p in job.output.iterdir() if p.name != first_write)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ResumeRefused(f"--output {job.output} is not empty ({shown}) and holds no {fmt.JOURNAL_NAME} or "
                            f"{fmt.MANIFEST_NAME}: not a run of this tool to resume, and its files are not ours to "
                            "delete; use an empty or new --output.")
    (job.output / first_write).unlink(missing_ok=True)
    return journal.start(fingerprint, WORK_DIR_NAME)


def _remove_leftovers(job: ShardJob, state: JournalState) -> None:
    """Delete what an interrupted run of this journal left: shard files written after its last
    entry, this tool's temporaries and the work folder the journal records; nothing else."""
    output = job.output
    done = {entry["shard"]["name"] for entry in state.shards}
    done |= {fmt.index_name(name) for name in done}
    for path in _shard_files(output, job.split):
        if path.name not in done:
            path.unlink()
    for path in _our_temporaries(output, job.split):
        path.unlink()
    if state.work_dir == WORK_DIR_NAME:
        shutil.rmtree(output / WORK_DIR_NAME, ignore_errors=True)


def _prepare_output(job: ShardJob, journal: Journal, fingerprint: dict) -> JournalState | None:
    """Check the output folder; return the journal state to continue from (None: already complete)."""
    try:
        if (job.output / fmt.MANIFEST_NAME).exists():
            _check_finished(job, journal, fingerprint)
            return None
        if journal.exists():
            state = _load_journal(job, journal, fingerprint)
        else:
            state = _start_journal(job, journal, fingerprint)
        _remove_leftovers(job, state)
        return state
    except OSError as err:  # e.g. a folder without write permission
        raise OutputRefused(f"--output {job.output}: {err.strerror or err}"
                            + (f": {err.filename}" if err.filename else "")) from None


class ShardPacker:
    """Packs results in input order into shards and journals each finished shard."""

    def __init__(self, job: ShardJob, journal: Journal, state: JournalState):
        self.job, self.journal, self.state = job, journal, state
        self.shard_index = len(state.shards)
        self.writer: ShardWriter | None = None
        self.pending_skips: list[dict] = []

    def add(self, position: int, result: PreparedSample | sr.SkipRecord) -> None:
        if isinstance(result, sr.SkipRecord):
            self.pending_skips.append(result.to_json())
            return
        try:
            if (self.writer is not None and self.job.shard_bytes is not None
                    and self.writer.size_with(result) > self.job.shard_bytes):
                self.close_shard(next_input=position)
            if self.writer is None:
                self.writer = ShardWriter(self.job.output, fmt.shard_name(self.job.split, self.shard_index))
            self.writer.add(result)
        finally:
            result.discard()
        if self.writer.count >= self.job.shard_size:
            self.close_shard(next_input=position + 1)

    def close_shard(self, next_input: int) -> None:
        assert self.writer is not None
        record = self.writer.finish()
        entry = {"type": "shard", "shard": record.to_json(), "next_input": next_input, "skipped": self.pending_skips}
        self.journal.append(entry)
        self.state.shards.append(entry)
        self.pending_skips, self.writer = [], None
        self.shard_index += 1

    def finish(self, num_inputs: int) -> None:
        if self.writer is not None:
            self.close_shard(next_input=num_inputs)
        self.state.end = {"type": "end", "next_input": num_inputs, "skipped": self.pending_skips}
        self.journal.append(self.state.end)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def first_positions(ordered: list[InputItem]) -> dict[str, int]:
    """Source -> its first position: a later copy is a ``duplicate`` (packed once)."""
    first: dict[str, int] = {}
    for position, item in enumerate(ordered):
        first.setdefault(item.source, position)
    return first


def _results_in_order(job: ShardJob, ordered: list[InputItem], start: int, labels: dict[str, int],
                      prepared: PreparedClips | None = None):
    """Yield (position, result) for positions start.. in order, transcoding ahead in the pool;
    clips already transcoded by a SLURM array task (``prepared``) are taken from there."""
    work = job.output / WORK_DIR_NAME
    seen = {item.source for item in ordered[:start]}
    with ProcessPoolExecutor(max_workers=job.workers, initializer=_init_worker,
                             initargs=(os.getpid(),)) as pool:
        queue: collections.deque[tuple[int, Future | sr.SkipRecord]] = collections.deque()
        next_position = start

        def submit_more() -> None:
            nonlocal next_position
            while next_position < len(ordered) and len(queue) < job.workers * LOOKAHEAD_PER_WORKER:
                item = ordered[next_position]
                if item.source in seen:
                    task: Future | sr.SkipRecord = sr.SkipRecord(
                        item.source, sr.DUPLICATE, f"{item.source} is listed more than once; packed once")
                elif item.path is None:
                    task = sr.SkipRecord(item.source, item.reason, item.missing)
                elif prepared is not None and (ready := prepared.load(next_position, item)) is not None:
                    task = ready
                else:
                    task = pool.submit(prepare_clip, item, labels, job.settings, job.policy,
                                       work / f"{next_position:09d}")
                seen.add(item.source)
                queue.append((next_position, task))
                next_position += 1

        try:
            submit_more()
            while queue:
                position, task = queue.popleft()
                result = task.result() if isinstance(task, Future) else task
                submit_more()
                yield position, result
        finally:
            for _, task in queue:
                if isinstance(task, Future):
                    task.cancel()


def _write_skipped(output: Path, state: JournalState) -> list[dict]:
    entries = [*state.shards, *([state.end] if state.end else [])]
    skipped = [record for entry in entries for record in entry["skipped"]]
    atomic_write_bytes(output / fmt.SKIPPED_NAME,
                       b"".join(json.dumps(r, sort_keys=True).encode("utf-8") + b"\n" for r in skipped))
    return skipped


def _manifest(job: ShardJob, state: JournalState, skipped: list[dict], labels: dict[str, int]) -> dict:
    shards = [entry["shard"] for entry in state.shards]
    reasons = collections.Counter(record["reason"] for record in skipped)
    return {
        "format_version": fmt.FORMAT_VERSION,
        "split": job.split,
        "num_inputs": len(job.inputs),
        "num_samples": sum(s["samples"] for s in shards),
        "num_skipped": len(skipped),
        "skipped_by_reason": dict(sorted(reasons.items())),
        "num_shards": len(shards),
        "total_bytes": sum(s["bytes"] for s in shards),
        "shards": shards,
        "label_map": labels,
        "sample_exts": list(fmt.SAMPLE_EXTS),
        "sample_info_fields": list(fmt.SAMPLE_INFO_FIELDS),
        "video": {"codec": job.settings.video_codec, "container": CONTAINERS[job.settings.video_codec],
                  "fps": job.settings.fps, "short_side": job.settings.short_side,
                  "keyframe_interval": job.settings.keyframe_interval},
        "audio": {"codec": "flac", "rate": job.settings.audio_rate, "channels": 1},
        "args": {
            "input_kind": job.input_kind, "input_root": job.input_root, "list": job.list_file,
            "filename_pattern": job.filename_pattern, "split": job.split, "shard_size": job.shard_size,
            "shard_bytes": job.shard_bytes, "seed": job.seed, "workers": job.workers,
            **asdict(job.settings), **asdict(job.policy),
        },
        "fingerprint": state.fingerprint,
        "versions": tool_versions(),
    }


def build_shards(job: ShardJob) -> BuildSummary:
    """Build (or finish, or confirm) the split in ``job.output``; see the module docstring."""
    _make_output_folder(job.output)
    ordered = ordered_inputs(job.inputs, job.seed)
    labels = label_map(ordered)
    fingerprint = job_fingerprint(job, ordered)
    journal = Journal(job.output)
    state = _prepare_output(job, journal, fingerprint)
    if state is None:
        manifest = read_manifest(job.output)
        return BuildSummary(job.output, manifest["num_inputs"], manifest["num_samples"], manifest["num_skipped"],
                            manifest["num_shards"], manifest["num_shards"], True, manifest["skipped_by_reason"])

    resumed = len(state.shards)
    start = state.next_input
    prepared = PreparedClips(job.output)
    prepared = prepared if prepared.belongs_to(fingerprint) else None
    if state.end is None:
        packer = ShardPacker(job, journal, state)
        bar = tqdm(total=len(ordered), initial=start, unit="clip", desc=f"{job.split} shards",
                   disable=not job.progress, dynamic_ncols=True, smoothing=0.05, file=sys.stderr)
        skipped_count = sum(len(entry["skipped"]) for entry in state.shards)
        try:
            for position, result in _results_in_order(job, ordered, start, labels, prepared):
                packer.add(position, result)
                skipped_count += isinstance(result, sr.SkipRecord)
                bar.set_postfix(shards=packer.shard_index, skipped=skipped_count, refresh=False)
                bar.update(1)
            packer.finish(len(ordered))
        except BaseException:
            packer.abort()
            raise
        finally:
            bar.close()
            shutil.rmtree(job.output / WORK_DIR_NAME, ignore_errors=True)

    skipped = _write_skipped(job.output, state)
    manifest = _manifest(job, state, skipped, labels)
    write_manifest(job.output, manifest)
    if prepared is not None:
        prepared.remove()
    return BuildSummary(job.output, manifest["num_inputs"], manifest["num_samples"], manifest["num_skipped"],
                        manifest["num_shards"], resumed, False, manifest["skipped_by_reason"])
