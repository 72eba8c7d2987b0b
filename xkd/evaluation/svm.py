"""Linear SVM protocol (docs/method.md §6; paper A.5): UCF101, HMDB51, ESC50, Kinetics-Sound fusion.

Per split: a LinearSVC (scikit-learn, one-vs-rest, squared hinge) is trained on every clip
feature of the training items (each clip labelled with its item's class), optionally after
standardising each feature dimension with the training clips' mean and std. The cost C comes
from the paper's grid {1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1} and is **chosen by cross-validation on
the training split**: folds over *items* (stratified by class, so that the clips of one item
never sit on both sides), each fold scored like the test (mean of the per-clip decision
functions of an item, top-1); the best mean CV top-1 wins (ties: the smaller C). The model is
then refit on the whole training split. The reference code's choice - the C with the best
*test* accuracy - is available only as ``c_selection="test"`` and is recorded as such, since it
reports an optimistic number.

Test: the score of an item is the mean of the decision functions of its clips (3 uniformly
spaced clips); top-1 and top-5 per split, and their mean over the splits.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from xkd.evaluation.errors import EvalInputError
from xkd.evaluation.metrics import average_clips, topk_accuracy

log = logging.getLogger(__name__)

C_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
C_SELECTIONS = ("cv", "test")
NEG = -1e9  # item score of a class the classifier never saw in training


@dataclass(frozen=True)
class SVMConfig:
    c_grid: tuple[float, ...] = C_GRID
    c_selection: str = "cv"  # cv (default) | test (reference code: best C on the test split)
    cv_folds: int = 5
    standardize: bool = True
    max_iter: int = 10000
    n_jobs: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        # The grid, folds and iterations are command-line options (linear_svm.py, late_fusion.py).
        if self.c_selection not in C_SELECTIONS:
            raise EvalInputError(f"C selection {self.c_selection!r}: expected one of {C_SELECTIONS}")
        if not self.c_grid or not all(c > 0 for c in self.c_grid):
            raise EvalInputError(f"--c-grid {' '.join(f'{c:g}' for c in self.c_grid)}: expected positive values")
        if self.cv_folds < 2:
            raise EvalInputError(f"--cv-folds {self.cv_folds}: cross-validation needs at least 2 folds")
        if self.max_iter < 1:
            raise EvalInputError(f"--max-iter {self.max_iter}: expected at least 1")
        if self.n_jobs == 0:
            raise EvalInputError("--jobs 0: expected a number of parallel fits (-1: one per core)")


@dataclass
class SVMSplitResult:
    split: str
    C: float
    top1: float  # percent
    top5: float
    c_selection: str
    selection_scores: dict[str, float] = field(default_factory=dict)  # C -> CV top-1 (or test top-1)
    train_items: int = 0
    test_items: int = 0
    train_clips: int = 0
    not_converged: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def entry(self, missing_entries: int | None = None) -> dict:
        """This split's entry of the result JSON / MLflow child run."""
        params = {"C": self.C, "c_selection": self.c_selection, "train_items": self.train_items,
                  "test_items": self.test_items}
        if missing_entries is not None:
            params["missing_entries"] = missing_entries
        return {"split": self.split, "metrics": {"top1": self.top1, "top5": self.top5}, "params": params,
                "selection_scores": self.selection_scores, "not_converged": self.not_converged}


def _fit(features: np.ndarray, labels: np.ndarray, C: float, config: SVMConfig):
    """Fit on (N, n, D) item clips with (N,) labels; returns the model and whether it converged."""
    x = features.reshape(-1, features.shape[-1])
    y = np.repeat(labels, features.shape[1])
    svc = LinearSVC(C=C, max_iter=config.max_iter, dual="auto", random_state=config.seed)
    model = make_pipeline(StandardScaler(), svc) if config.standardize else make_pipeline(svc)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    return model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def item_scores(model, features: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, n, D) clip features -> (N, num_classes) mean decision function per item."""
    n_items, n_clips, dim = features.shape
    decision = model.decision_function(features.reshape(-1, dim))
    classes = model.classes_
    if decision.ndim == 1:  # binary problem: one column, positive = classes_[1]
        decision = np.stack([-decision, decision], axis=1)
    averaged = average_clips(decision.reshape(n_items, n_clips, -1))
    out = np.full((n_items, num_classes), NEG)
    out[:, classes] = averaged
    return out


def _score(model, features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    return topk_accuracy(item_scores(model, features, num_classes), labels, 1)


def _folds(labels: np.ndarray, config: SVMConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if smallest >= 2:
        splitter = StratifiedKFold(n_splits=max(2, min(config.cv_folds, smallest)), shuffle=True,
                                   random_state=config.seed)
        return list(splitter.split(np.zeros(len(labels)), labels))
    log.warning("a class has a single training item: C is chosen by unstratified %d-fold CV", config.cv_folds)
    return list(KFold(n_splits=min(config.cv_folds, len(labels)), shuffle=True,
                      random_state=config.seed).split(labels))


def _cv_task(train: np.ndarray, labels: np.ndarray, fold: tuple[np.ndarray, np.ndarray], C: float,
             num_classes: int, config: SVMConfig) -> tuple[float, bool]:
    fit_idx, val_idx = fold
    model, converged = _fit(train[fit_idx], labels[fit_idx], C, config)
    return _score(model, train[val_idx], labels[val_idx], num_classes), converged


def cross_validate_c(train: np.ndarray, labels: np.ndarray, num_classes: int, config: SVMConfig) -> dict[float, float]:
    """Mean CV top-1 (item level, multi-clip averaged) of every C on the training split."""
    folds = _folds(labels, config)
    tasks = [(C, f) for C in config.c_grid for f in folds]
    results = Parallel(n_jobs=config.n_jobs)(
        delayed(_cv_task)(train, labels, fold, C, num_classes, config) for C, fold in tasks)
    scores: dict[float, list[float]] = {}
    for (C, _), (score, _) in zip(tasks, results):
        scores.setdefault(C, []).append(score)
    return {C: float(np.mean(v)) for C, v in scores.items()}


def best_c(scores: dict[float, float]) -> float:
    """Highest score; ties go to the smaller C (the stronger regulariser)."""
    top = max(scores.values())
    return min(C for C, s in scores.items() if s == top)


def evaluate_split(name: str, train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                   num_classes: int, config: SVMConfig = SVMConfig()) -> SVMSplitResult:
    """One split of the protocol (see the module docstring). Features are (N, n_clips, D)."""
    if train.ndim != 3 or test.ndim != 3:
        raise ValueError(f"features must be (items, clips, dim); got {train.shape} and {test.shape}")
    if len(np.unique(train_labels)) < 2:  # a split list that names items of one class only
        raise EvalInputError(f"split {name}: its {len(train)} training items are all of one class; "
                             "a classifier needs at least 2")
    not_converged = 0
    if config.c_selection == "cv":
        selection = cross_validate_c(train, train_labels, num_classes, config)
        C = best_c(selection)
        model, converged = _fit(train, train_labels, C, config)
        not_converged += not converged
    else:  # reference code: every C is fit on the whole train split and the best test score is kept
        fitted = Parallel(n_jobs=config.n_jobs)(delayed(_fit)(train, train_labels, C, config) for C in config.c_grid)
        selection = {C: _score(m, test, test_labels, num_classes) for C, (m, _) in zip(config.c_grid, fitted)}
        C = best_c(selection)
        model, converged = fitted[list(config.c_grid).index(C)]
        not_converged += sum(not ok for _, ok in fitted)
    if not_converged:
        log.warning("split %s: LinearSVC did not converge in %d iterations for %d fit(s)", name, config.max_iter,
                    not_converged)
    scores = item_scores(model, test, num_classes)
    return SVMSplitResult(
        split=name, C=C, top1=100.0 * topk_accuracy(scores, test_labels, 1),
        top5=100.0 * topk_accuracy(scores, test_labels, 5), c_selection=config.c_selection,
        selection_scores={f"{c:g}": 100.0 * s for c, s in selection.items()}, train_items=len(train),
        test_items=len(test), train_clips=int(train.shape[0] * train.shape[1]), not_converged=not_converged)


def summarize(results: list[SVMSplitResult]) -> dict[str, float]:
    """Mean top-1 / top-5 over the splits (the number the paper reports)."""
    return {"top1": float(np.mean([r.top1 for r in results])), "top5": float(np.mean([r.top5 for r in results]))}
