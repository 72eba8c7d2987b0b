"""The table of docs/method.md §7 (paper Tables 7-9, teacher encoders) with our numbers beside the paper's.

Columns: UCF101, HMDB51, K400, ESC50 (linear / fine-tuned top-1), FSD50K (linear / fine-tuned
mAP), Kinetics-Sound late fusion (top-1). "Linear" is the linear SVM for UCF101, HMDB51 and
ESC50, FC-tuning for K400 and FSD50K (the paper's choice for the large sets; a K400 SVM result is
used when there is no FC-tuning one). Our rows: one per (checkpoint, encoder role) found in the
result files; results on other datasets (e.g. the bundled sound set) are listed below the table.
Numbers are means over the evaluated splits.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from xkd.evaluation.results import EvalRecord

COLUMNS = ("UCF101", "HMDB51", "K400", "ESC50", "FSD50K", "KS fusion")
PAPER = [  # docs/method.md §7: (pretrain, model, {column: (linear, finetuned)} / fusion)
    ("K400", "XKD", {"UCF101": (83.8, 94.1), "HMDB51": (57.4, 69.0), "K400": (51.4, 77.6), "ESC50": (89.4, 93.6),
                     "FSD50K": (45.8, 54.1), "KS fusion": (81.2, None)}),
    ("K400", "XKD-MAS", {"UCF101": (81.7, 93.4), "HMDB51": (55.1, 65.9), "K400": (50.1, 75.9), "ESC50": (87.3, 92.7),
                         "FSD50K": (43.0, 52.3), "KS fusion": (78.8, None)}),
    ("K400", "XKD-MATS", {"UCF101": (80.1, 93.1), "HMDB51": (53.1, 65.7), "K400": (48.8, 75.7), "ESC50": (88.7, 92.9),
                          "FSD50K": (43.4, 53.8), "KS fusion": (78.3, None)}),
    ("AudioSet", "XKD", {"UCF101": (88.4, 95.8), "HMDB51": (62.2, 75.7), "K400": (56.5, 80.1), "ESC50": (93.6, 96.5),
                         "FSD50K": (51.5, 58.5), "KS fusion": (None, None)}),
]
ALIASES = {"ucf101": "UCF101", "ucf": "UCF101", "hmdb51": "HMDB51", "hmdb": "HMDB51", "k400": "K400",
           "kinetics400": "K400", "kinetics": "K400", "esc50": "ESC50", "esc": "ESC50", "fsd50k": "FSD50K",
           "ks": "KS fusion", "kineticssound": "KS fusion", "kineticssounds": "KS fusion"}
LINEAR_PREFERENCE = {"K400": ("fc_tune", "linear_svm"), "FSD50K": ("fc_tune", "linear_svm")}


def column_of(dataset: str) -> str | None:
    return ALIASES.get(re.sub(r"[^a-z0-9]", "", dataset.lower()))


def headline(record: EvalRecord) -> float | None:
    """The number the table shows: mAP for multi-label results, else top-1."""
    for key in ("mAP", "top1"):
        if key in record.mean:
            return float(record.mean[key])
    return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _cell(linear: float | None, finetuned: float | None, fusion: bool) -> str:
    return _fmt(linear) if fusion else f"{_fmt(linear)} / {_fmt(finetuned)}"


def our_rows(records: list[EvalRecord]) -> tuple[list[tuple[str, dict]], list[EvalRecord]]:
    """((row label, {column: (linear, finetuned)}) per checkpoint and role, records of other datasets)."""
    groups: dict[tuple[str, str], list[EvalRecord]] = defaultdict(list)
    others = []
    for record in records:
        if column_of(record.dataset) is None:
            others.append(record)
        else:
            groups[(record.checkpoint, record.encoder)].append(record)
    rows = []
    for (checkpoint, role), group in sorted(groups.items()):
        cells: dict[str, tuple[float | None, float | None]] = {}
        for column in COLUMNS:
            mine = [r for r in group if column_of(r.dataset) == column]
            if column == "KS fusion":
                fused = [r for r in mine if r.protocol == "late_fusion"]
                cells[column] = (headline(fused[-1]) if fused else None, None)
                continue
            linear = None
            for protocol in LINEAR_PREFERENCE.get(column, ("linear_svm", "fc_tune")):
                hits = [r for r in mine if r.protocol == protocol]
                if hits:
                    linear = headline(hits[-1])
                    break
            tuned = [r for r in mine if r.protocol == "finetune"]
            cells[column] = (linear, headline(tuned[-1]) if tuned else None)
        rows.append((f"ours: {Path(checkpoint).parent.parent.name or checkpoint}/{Path(checkpoint).name} ({role})",
                     cells))
    return rows, others


def render(records: list[EvalRecord]) -> str:
    """Markdown: the section 7 table, the paper's rows then ours; then other results."""
    header = ("| pretrain | model | UCF101 lin / FT | HMDB51 lin / FT | K400 lin / FT | ESC50 lin / FT "
              "| FSD50K lin / FT (mAP) | KS fusion |")
    lines = [header, "|" + "---|" * 8]
    for pretrain, model, cells in PAPER:
        row = [_cell(*cells[c], fusion=c == "KS fusion") for c in COLUMNS]
        lines.append(f"| {pretrain} (paper) | {model} | " + " | ".join(row) + " |")
    rows, others = our_rows(records)
    for label, cells in rows:
        row = [_cell(*cells[c], fusion=c == "KS fusion") for c in COLUMNS]
        lines.append(f"| {label} | | " + " | ".join(row) + " |")
    if not rows:
        lines.append("| ours | (no results on these datasets yet) |" + " |" * 6)
    if others:
        lines += ["", "Other results (datasets outside the paper's table):", "",
                  "| protocol | dataset | modality | encoder | checkpoint | splits | metric |", "|" + "---|" * 7]
        for r in sorted(others, key=lambda r: (r.dataset, r.protocol, r.checkpoint, r.encoder)):
            metric = ", ".join(f"{k} {v:.1f}" for k, v in r.mean.items())
            lines.append(f"| {r.protocol} | {r.dataset} | {r.modality} | {r.encoder} | {r.checkpoint} | "
                         f"{len(r.splits)} | {metric} |")
    return "\n".join(lines) + "\n"
