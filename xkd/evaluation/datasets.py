"""Labelled evaluation datasets: shards made by ``data_prep/make_shards.py`` + labels + official splits.

A dataset is one or more shard directories (``make_shards.py --input <root>``, label = parent
folder; or a Kinetics / AudioSet CSV; audio-only sets with ``--no-video-policy audio-only``).
Each item's labels come from its json member (``labels``: one for single-label sets, several for
AudioSet-style multi-label sets) unless a label file overrides them (``--labels``: ESC-50's
``meta/esc50.csv`` (filename, category), FSD50K's ``dev.csv`` / ``eval.csv`` (fname, labels
as a comma list), or any CSV with a name column and a label column).

Splits (docs/method.md §6: "averaged over official splits") are named lists of train and test
items, read from the datasets' own files:

==========================  ==================================================================
``esc50:<meta.csv>``        one split per value of the ``fold`` column (test = that fold)
``folds:<file.csv>``        the same for any CSV with a name column and a ``fold`` column
``ucf101:<dir>``            ``trainlist0N.txt`` / ``testlist0N.txt`` (N = 1, 2, 3)
``hmdb51:<dir>``            ``<class>_test_splitN.txt`` lines ``<video> <0|1|2>`` (1 train, 2 test)
``fsd50k:<dir>``            ``dev.csv`` rows with split=train (val is not used) vs ``eval.csv``
``lists:<dir>``             ``<name>_train.txt`` + ``<name>_test.txt`` pairs, one entry per line
==========================  ==================================================================

or, without a split file, a train directory and a test directory (``--test-data``; Kinetics,
FSD50K shards built per official subset). Entries are matched to items by the source path
relative to the shard input root, else by file name, else by file name without extension
(``1-100032-A-0.wav``, ``64760``); an ambiguous name is an error, names with no item are
counted as ``missing`` (unavailable videos) and reported.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from xkd.data import format as fmt
from xkd.data.shard_index import SampleRef, index_split, resolve_shards
from xkd.data.shard_writer import file_sha256
from xkd.evaluation.errors import EvalInputError

log = logging.getLogger(__name__)

NAME_COLUMNS = ("source", "filename", "fname", "file", "path", "video", "youtube_id", "ytid")
LABEL_COLUMNS = ("labels", "label", "category", "class")


class DatasetError(EvalInputError):
    """A dataset, label file or split list cannot be used (names the file and the problem)."""


@dataclass(frozen=True)
class LabeledItem:
    """One evaluation item (a clip of the dataset) and what the loaders need to know about it."""

    index: int  # position in the dataset
    key: str
    source: str  # path relative to the shard input root ("ApplyEyeMakeup/v_..._c01.avi")
    ref: SampleRef
    labels: tuple[str, ...]
    origin: int  # which of the dataset's shard directories it came from
    num_frames: int
    fps: int
    num_audio_samples: int
    sample_rate: int
    width: int
    height: int
    has_video: bool
    has_audio: bool

    @property
    def video_seconds(self) -> float:
        return self.num_frames / self.fps if self.has_video else 0.0

    @property
    def audio_seconds(self) -> float:
        return self.num_audio_samples / self.sample_rate if self.sample_rate else 0.0

    @property
    def duration(self) -> float:
        """Seconds over which clip windows are placed: the video's when there is one, else the
        audio's. Both modalities use it, so clip i of the audio and of the video cover the same span."""
        return self.video_seconds if self.has_video else self.audio_seconds


def _normalise(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


class SourceIndex:
    """Find an item by its source path, file name, or file name without extension."""

    def __init__(self, sources: list[str]):
        self.exact: dict[str, list[int]] = {}
        self.base: dict[str, list[int]] = {}
        self.stem: dict[str, list[int]] = {}
        for index, source in enumerate(sources):
            path = PurePosixPath(_normalise(source))
            self.exact.setdefault(str(path), []).append(index)
            self.base.setdefault(path.name, []).append(index)
            self.stem.setdefault(path.stem, []).append(index)

    def find(self, name: str, where: str = "") -> int | None:
        path = PurePosixPath(_normalise(name))
        for table, key in ((self.exact, str(path)), (self.base, path.name), (self.stem, path.stem)):
            hits = table.get(key)
            if hits:
                if len(hits) > 1:
                    raise DatasetError(f"{where}: {name!r} matches {len(hits)} items (use source paths "
                                       "relative to the shard input root to tell them apart)")
                return hits[0]
        return None


# ----------------------------------------------------------------------------- label files


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise DatasetError(f"{path}: empty CSV")
    return rows


def _column(rows: list[dict[str, str]], choices: tuple[str, ...], path: Path, what: str) -> str:
    for name in choices:
        if name in rows[0]:
            return name
    raise DatasetError(f"{path}: no {what} column (looked for {', '.join(choices)}; found {', '.join(rows[0])})")


def read_label_file(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Name -> labels from a CSV (ESC-50 meta, FSD50K ground truth, or any name + label CSV).

    A ``labels`` column holds a comma-separated list (multi-label, FSD50K); ``label`` /
    ``category`` / ``class`` hold one label.
    """
    path = Path(path)
    rows = _read_csv(path)
    name_col = _column(rows, NAME_COLUMNS, path, "file name")
    label_col = _column(rows, LABEL_COLUMNS, path, "label")
    table = {}
    for row in rows:
        value = row[label_col]
        labels = tuple(lab.strip() for lab in value.split(",") if lab.strip()) if label_col == "labels" else (
            (value,) if value else ())
        table[row[name_col]] = labels
    return table


# ----------------------------------------------------------------------------- datasets


def _shard_fingerprints(directory: str) -> list[tuple[str, str]]:
    """(shard name, sha256) of every shard: from the manifest when it lists the shard, else hashed."""
    shards = resolve_shards(directory)
    manifest_path = Path(shards[0]).parent / fmt.MANIFEST_NAME
    listed = {}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        listed = {entry["name"]: entry["sha256"] for entry in manifest.get("shards", [])}
    return [(Path(s).name, listed.get(Path(s).name) or file_sha256(Path(s))) for s in shards]


@dataclass
class LabeledDataset:
    """Items of one or more shard directories with their labels; ``classes`` are sorted label names."""

    name: str
    items: list[LabeledItem]
    classes: list[str]
    multi_label: bool
    roots: list[str]
    fingerprint: str  # sha256 over the shards' own sha256 and the labels: identifies the data
    _index: SourceIndex | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def keys(self) -> list[str]:
        return [item.key for item in self.items]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def find(self, name: str, where: str = "") -> int | None:
        if self._index is None:
            self._index = SourceIndex([item.source for item in self.items])
        return self._index.find(name, where)

    def targets(self, indices: np.ndarray | None = None) -> np.ndarray:
        """(N,) class indices of a single-label set, or (N, C) 0/1 matrix of a multi-label set."""
        chosen = self.items if indices is None else [self.items[i] for i in indices]
        lookup = {name: i for i, name in enumerate(self.classes)}
        if self.multi_label:
            out = np.zeros((len(chosen), len(self.classes)), dtype=np.int64)
            for row, item in enumerate(chosen):
                out[row, [lookup[lab] for lab in item.labels]] = 1
            return out
        return np.array([lookup[item.labels[0]] for item in chosen], dtype=np.int64)

    def describe(self) -> dict:
        return {"name": self.name, "items": len(self.items), "classes": len(self.classes),
                "multi_label": self.multi_label, "roots": self.roots, "fingerprint": self.fingerprint}


def load_dataset(paths: list[str | Path] | str | Path, labels: list[str | Path] | None = None, name: str | None = None,
                 multi_label: bool | None = None) -> LabeledDataset:
    """Read the items of shard directories (each sample's json and npy members).

    Args:
        paths: shard directories (or brace patterns), in order; ``LabeledItem.origin`` is the position.
        labels: label CSVs overriding the json labels (see :func:`read_label_file`).
        name: dataset name for results (default: the first directory's name).
        multi_label: force the task type; default: multi-label when an item has more than one label
            or a label file has a ``labels`` column with lists.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise DatasetError("no shard directory given")
    table: dict[str, tuple[str, ...]] = {}
    for label_file in labels or []:
        table.update(read_label_file(label_file))
    label_index = SourceIndex(list(table)) if table else None
    label_names = list(table)
    items: list[LabeledItem] = []
    digest = hashlib.sha256()
    for origin, path in enumerate(paths):
        items.extend(_read_directory(str(path), origin, len(items), digest, label_index, label_names, table))
    if not items:
        raise DatasetError(f"{paths}: no samples")
    unlabeled = [item.source for item in items if not item.labels]
    if unlabeled:
        log.warning("%d of %d items have no label and cannot be used in a split (e.g. %s)", len(unlabeled),
                    len(items), unlabeled[0])
    classes = sorted({lab for item in items for lab in item.labels})
    multi = any(len(item.labels) > 1 for item in items) if multi_label is None else multi_label
    for item in items:
        digest.update(f"{item.key}\t{'|'.join(item.labels)}\n".encode())
    return LabeledDataset(name=name or Path(str(paths[0])).name, items=items, classes=classes, multi_label=multi,
                          roots=[str(p) for p in paths], fingerprint=digest.hexdigest())


def _read_directory(path: str, origin: int, first: int, digest, label_index: SourceIndex | None,
                    label_names: list[str], table: dict[str, tuple[str, ...]]) -> list[LabeledItem]:
    """The items of one shard directory (fingerprints into ``digest``). A shard, index or member that
    cannot be read is the user's data, not a bug: it becomes a DatasetError naming the directory."""
    try:
        for shard, sha in _shard_fingerprints(path):
            digest.update(f"{origin}\t{shard}\t{sha}\n".encode())
        return [_item(ref, first + n, origin, label_index, label_names, table)
                for n, ref in enumerate(index_split(path))]
    except (DatasetError, FileNotFoundError):
        raise  # already name the file and the problem
    except (ValueError, KeyError, OSError, tarfile.TarError) as error:
        raise DatasetError(f"{path}: cannot read the shards ({type(error).__name__}: {error}); "
                           "check them with data_prep/make_shards.py --verify") from error


def _item(ref: SampleRef, index: int, origin: int, label_index: SourceIndex | None, label_names: list[str],
          table: dict[str, tuple[str, ...]]) -> LabeledItem:
    meta = json.loads(ref.read(fmt.META_EXT))
    info = np.load(io.BytesIO(ref.read(fmt.INFO_EXT)), allow_pickle=False)
    source = meta.get("source") or ref.key
    labels = tuple(meta.get("labels") or ([meta["label"]] if isinstance(meta.get("label"), str) else []))
    if label_index is not None:
        hit = label_index.find(source, "label file")
        labels = table[label_names[hit]] if hit is not None else ()
    names = {m[0] for m in ref.members}
    return LabeledItem(
        index=index, key=ref.key, source=source, ref=ref, labels=labels, origin=origin,
        num_frames=int(info[fmt.NUM_FRAMES]), fps=int(meta.get("fps") or 8),
        num_audio_samples=int(info[fmt.NUM_AUDIO_SAMPLES]), sample_rate=int(meta.get("audio_rate") or 16000),
        width=int(info[fmt.WIDTH]), height=int(info[fmt.HEIGHT]),
        has_video=fmt.VIDEO_EXT in names and int(info[fmt.NUM_FRAMES]) > 0,
        has_audio=bool(int(info[fmt.HAS_AUDIO])) and fmt.AUDIO_EXT in names)


# ----------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class SplitDef:
    """A split as named entries (before matching them to items)."""

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """A split as item indices of a dataset."""

    name: str
    train: np.ndarray
    test: np.ndarray
    missing: int = 0  # listed entries with no item in the shards

    def describe(self) -> dict:
        return {"split": self.name, "train_items": int(len(self.train)), "test_items": int(len(self.test)),
                "missing_entries": self.missing}


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _strip_label_column(line: str) -> str:
    """UCF101 train lists append the class number: ``Class/v_x.avi 1``."""
    head, _, tail = line.rpartition(" ")
    return head if head and tail.isdigit() else line


def esc50_splits(path: Path) -> list[SplitDef]:
    """One split per fold (test = the fold, train = the other folds): ESC-50's meta/esc50.csv."""
    rows = _read_csv(path)
    name_col = _column(rows, NAME_COLUMNS, path, "file name")
    if "fold" not in rows[0]:
        raise DatasetError(f"{path}: no 'fold' column")
    folds = sorted({row["fold"] for row in rows}, key=lambda f: (len(f), f))
    return [SplitDef(f"fold{fold}", tuple(r[name_col] for r in rows if r["fold"] != fold),
                     tuple(r[name_col] for r in rows if r["fold"] == fold)) for fold in folds]


def ucf101_splits(directory: Path) -> list[SplitDef]:
    """UCF101's ``trainlist0N.txt`` / ``testlist0N.txt`` (ucfTrainTestlist)."""
    out = []
    for train in sorted(directory.glob("trainlist0*.txt")):
        number = train.stem[len("trainlist"):]
        test = directory / f"testlist{number}.txt"
        if not test.is_file():
            raise DatasetError(f"{directory}: {train.name} has no {test.name}")
        out.append(SplitDef(f"split{int(number)}", tuple(_strip_label_column(x) for x in _lines(train)),
                            tuple(_lines(test))))
    if not out:
        raise DatasetError(f"{directory}: no trainlist0N.txt files (UCF101 ucfTrainTestlist)")
    return out


def hmdb51_splits(directory: Path) -> list[SplitDef]:
    """HMDB51's ``<class>_test_splitN.txt``: ``<video> 1`` = train, ``2`` = test, ``0`` = unused."""
    by_split: dict[int, tuple[list[str], list[str]]] = {}
    pattern = re.compile(r".+_test_split(\d+)\.txt")
    for path in sorted(directory.glob("*_test_split*.txt")):
        match = pattern.fullmatch(path.name)
        if not match:
            continue
        train, test = by_split.setdefault(int(match.group(1)), ([], []))
        for line in _lines(path):
            video, _, flag = line.rpartition(" ")
            if flag == "1":
                train.append(video)
            elif flag == "2":
                test.append(video)
    if not by_split:
        raise DatasetError(f"{directory}: no <class>_test_splitN.txt files (HMDB51 test_train_splits)")
    return [SplitDef(f"split{n}", tuple(tr), tuple(te)) for n, (tr, te) in sorted(by_split.items())]


def fsd50k_splits(directory: Path) -> list[SplitDef]:
    """FSD50K ground truth: train = ``dev.csv`` rows with split=train, test = ``eval.csv``."""
    dev, evaluation = _read_csv(directory / "dev.csv"), _read_csv(directory / "eval.csv")
    train = tuple(r["fname"] for r in dev if r.get("split", "train") == "train")
    return [SplitDef("eval", train, tuple(r["fname"] for r in evaluation))]


def list_splits(directory: Path) -> list[SplitDef]:
    """``<name>_train.txt`` + ``<name>_test.txt`` (or ``train.txt`` + ``test.txt``), one entry per line."""
    out = []
    for train in sorted(directory.glob("*train*.txt")):
        test = train.with_name(train.name.replace("train", "test"))
        if test.is_file():
            name = train.stem.replace("train", "").strip("_-.") or "split1"
            out.append(SplitDef(name, tuple(_lines(train)), tuple(_lines(test))))
    if not out:
        raise DatasetError(f"{directory}: no <name>_train.txt / <name>_test.txt pairs")
    return out


SPLIT_FORMATS = {"esc50": esc50_splits, "folds": esc50_splits, "ucf101": ucf101_splits, "hmdb51": hmdb51_splits,
                 "fsd50k": fsd50k_splits, "lists": list_splits}


def read_split_spec(spec: str) -> list[SplitDef]:
    """``<format>:<path>`` (see the module docstring) -> split definitions."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in SPLIT_FORMATS:
        raise DatasetError(f"split spec {spec!r}: expected <format>:<path> with format one of {sorted(SPLIT_FORMATS)}")
    return SPLIT_FORMATS[kind](Path(path))


def resolve_splits(dataset: LabeledDataset, definitions: list[SplitDef], only: list[str] | None = None) -> list[Split]:
    """Match split entries to items; drop (and count) entries with no item; reject unlabelled items."""
    out = []
    for definition in definitions:
        if only and definition.name not in only:
            continue
        parts, missing = [], 0
        for part, names in (("train", definition.train), ("test", definition.test)):
            found = []
            for name in names:
                hit = dataset.find(name, f"split {definition.name} ({part})")
                if hit is None:
                    missing += 1
                else:
                    found.append(hit)
            parts.append(np.array(sorted(set(found)), dtype=np.int64))
        if missing:
            log.warning("split %s: %d listed entries are not in the shards (unavailable or skipped clips)",
                        definition.name, missing)
        out.append(_checked(dataset, Split(definition.name, parts[0], parts[1], missing)))
    if only and len(out) != len(only):
        known = [d.name for d in definitions]
        raise DatasetError(f"splits {only}: not all found; the split file defines {known}")
    return out


def origin_split(dataset: LabeledDataset, test_origins: set[int], name: str = "test") -> Split:
    """Train = items of the dataset's first directories, test = items of ``test_origins`` (``--test-data``)."""
    train = np.array([i.index for i in dataset.items if i.origin not in test_origins and i.labels], dtype=np.int64)
    test = np.array([i.index for i in dataset.items if i.origin in test_origins and i.labels], dtype=np.int64)
    return _checked(dataset, Split(name, train, test))


def _has_track(item: LabeledItem, modality: str) -> bool:
    """Whether the item's clips of ``modality`` can be read. Audio: the flac member - a clip without
    a sound track has a silent one (``has_audio`` False), which is valid input (silence)."""
    if modality == "video":
        return item.has_video
    return any(member[0] == fmt.AUDIO_EXT for member in item.ref.members)


def require_modality(dataset: LabeledDataset, indices: np.ndarray, modality: str) -> None:
    """Every item of ``indices`` has the ``modality`` to evaluate; checked before any clip is decoded,
    so that e.g. audio-only shards with ``--modality video`` fail at once with one clear line."""
    lacking = [dataset.items[int(i)].source for i in indices if not _has_track(dataset.items[int(i)], modality)]
    if lacking:
        hint = ("; audio-only shards (make_shards.py --no-video-policy audio-only) have no video to evaluate"
                if modality == "video" else "")
        raise DatasetError(f"{', '.join(dataset.roots)}: {len(lacking)} of {len(indices)} items of the splits have "
                           f"no {modality} (e.g. {lacking[0]}){hint}")


def _checked(dataset: LabeledDataset, split: Split) -> Split:
    if not len(split.train) or not len(split.test):
        raise DatasetError(f"split {split.name}: {len(split.train)} train and {len(split.test)} test items; "
                           "both must be non-empty (do the split lists name the shards' sources?)")
    overlap = np.intersect1d(split.train, split.test)
    if len(overlap):
        raise DatasetError(f"split {split.name}: {len(overlap)} items are in both train and test "
                           f"(e.g. {dataset.items[int(overlap[0])].source})")
    unlabeled = [dataset.items[i].source for i in np.concatenate([split.train, split.test])
                 if not dataset.items[i].labels]
    if unlabeled:
        raise DatasetError(f"split {split.name}: {len(unlabeled)} items have no label (e.g. {unlabeled[0]})")
    return split
