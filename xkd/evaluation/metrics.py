"""Evaluation metrics (docs/method.md §6): multi-clip averaging, top-k accuracy, average precision / mAP.

* Item scores are the mean of the per-clip scores (decision functions, logits or
  probabilities) over the item's clips (paper A.5: "scores averaged").
* Top-k: the true class is among the k highest item scores (ties broken by class order).
* Average precision of one class: the area under its precision-recall step curve,
  ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds from high to low (tied
  scores form one threshold), without interpolation - the definition of
  ``sklearn.metrics.average_precision_score``. mAP (FSD50K, Fonseca et al. 2022) is the
  unweighted mean over the classes that have at least one positive in the evaluated set.
"""
from __future__ import annotations

import numpy as np


def average_clips(clip_scores: np.ndarray) -> np.ndarray:
    """(N, n_clips, C) per-clip scores -> (N, C) item scores (mean over clips)."""
    clip_scores = np.asarray(clip_scores)
    if clip_scores.ndim != 3:
        raise ValueError(f"expected (items, clips, classes) scores, got shape {clip_scores.shape}")
    return clip_scores.mean(axis=1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} score rows for {len(labels)} labels")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one class (see the module docstring); NaN when there is no positive."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets).astype(bool)
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    ranked_scores, ranked = scores[order], targets[order]
    true_pos = np.cumsum(ranked)
    false_pos = np.cumsum(~ranked)
    last_of_tie = np.r_[np.nonzero(np.diff(ranked_scores))[0], len(ranked_scores) - 1]
    true_pos, false_pos = true_pos[last_of_tie], false_pos[last_of_tie]
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """(mAP over classes with a positive, per-class AP with NaN for classes without one)."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape}: expected equal (N, C) shapes")
    per_class = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    valid = ~np.isnan(per_class)
    if not valid.any():
        raise ValueError("no class has a positive item: mAP is undefined")
    return float(per_class[valid].mean()), per_class


def classification_metrics(item_scores: np.ndarray, targets: np.ndarray, multi_label: bool) -> dict[str, float]:
    """top1/top5 (in %) for single-label targets (N,); mAP (in %) for multi-label targets (N, C)."""
    if multi_label:
        value, _ = mean_average_precision(item_scores, targets)
        return {"mAP": 100.0 * value}
    return {"top1": 100.0 * topk_accuracy(item_scores, targets, 1),
            "top5": 100.0 * topk_accuracy(item_scores, targets, 5)}
