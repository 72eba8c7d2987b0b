"""FC-tuning on frozen features (docs/method.md §6; paper A.5): K400 (top-1/top-5), FSD50K (mAP).

A single linear layer (after dropout) is trained on the frozen clip features of the training
items - every clip is a training sample carrying its item's target - with AdamW and a per-step
schedule (fixed, or cosine to 0 after an optional linear warm-up). Single-label sets use
cross-entropy and report top-1/top-5 of the mean clip logits of each test item; multi-label
sets (FSD50K) use binary cross-entropy on the 0/1 target vector and report mAP of the mean clip
probabilities (:func:`xkd.evaluation.metrics.mean_average_precision`).

Presets: ``fsd50k`` = lr 1e-3 fixed, weight decay 1e-5, dropout 0.3, batch 256, 50 epochs
(paper A.5); ``k400`` = lr 0.01 cosine, batch 512, 20 epochs; the paper gives no weight decay or
dropout for K400 ("similar to the setup mentioned earlier"), so those of FSD50K are used.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from xkd.evaluation.errors import EvalInputError
from xkd.distributed import resolve_device
from xkd.evaluation.metrics import average_clips, classification_metrics
from xkd.schedules import learning_rate

SCHEDULES = ("fixed", "cosine")


@dataclass(frozen=True)
class FCConfig:
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    dropout: float = 0.3
    schedule: str = "fixed"  # fixed | cosine (to 0)
    warmup_epochs: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    standardize: bool = False  # z-score each dimension with the training clips' statistics
    seed: int = 0

    def __post_init__(self) -> None:
        # Every field can come from the command line (fc_tune.py): name the one that is wrong.
        if self.schedule not in SCHEDULES:
            raise EvalInputError(f"FC-tuning schedule {self.schedule!r}: expected one of {SCHEDULES}")
        for option, value, ok, expected in (
                ("--epochs", self.epochs, self.epochs >= 1, "at least 1"),
                ("--batch-size", self.batch_size, self.batch_size >= 1, "at least 1"),
                ("--lr", self.lr, self.lr > 0, "positive"),
                ("--weight-decay", self.weight_decay, self.weight_decay >= 0, "0 or more"),
                ("--dropout", self.dropout, 0 <= self.dropout < 1, "in [0, 1)"),
                ("--warmup-epochs", self.warmup_epochs, self.warmup_epochs >= 0, "0 or more")):
            if not ok:  # also catches NaN
                raise EvalInputError(f"FC-tuning {option} {value}: expected {expected}")

    def replace(self, **changes) -> FCConfig:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


PRESETS = {
    "fsd50k": FCConfig(epochs=50, batch_size=256, lr=1e-3, weight_decay=1e-5, dropout=0.3, schedule="fixed"),
    "k400": FCConfig(epochs=20, batch_size=512, lr=0.01, weight_decay=1e-5, dropout=0.3, schedule="cosine"),
}


def lr_at(step: int, total: int, warmup: int, config: FCConfig) -> float:
    """Learning rate of a step: linear warm-up from 0, then fixed or cosine to 0 (xkd.schedules, as pretraining)."""
    return learning_rate(step, peak=config.lr, warmup_steps=warmup,
                         total_steps=warmup if config.schedule == "fixed" else total)


@dataclass
class FCResult:
    metrics: dict[str, float]  # top1/top5 or mAP, in percent
    losses: list[float]  # mean training loss per epoch
    config: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def entry(self, split) -> dict:
        """This split's entry of the result JSON / MLflow child run."""
        return {"split": split.name, "metrics": self.metrics,
                "params": {"epochs": self.config["epochs"], "lr": self.config["lr"], **split.describe()},
                "epoch_losses": self.losses}


def train_fc(train: np.ndarray, train_targets: np.ndarray, test: np.ndarray, test_targets: np.ndarray,
             num_classes: int, multi_label: bool, config: FCConfig = FCConfig(), device: str = "auto") -> FCResult:
    """Train the linear layer on (N, n, D) training clip features and evaluate on (M, k, D) test items.

    Targets: (N,) class indices (single-label) or (N, C) 0/1 (multi-label).
    """
    target_device = resolve_device(device)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    n_items, n_clips, dim = train.shape
    x = torch.from_numpy(train.reshape(-1, dim)).float()
    y = torch.from_numpy(np.repeat(train_targets, n_clips, axis=0))
    x_test = torch.from_numpy(test.reshape(-1, dim)).float()
    if config.standardize:
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        x, x_test = (x - mean) / std, (x_test - mean) / std
    head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(dim, num_classes)).to(target_device)
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    criterion = nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    total, warmup = config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch)
    losses, step = [], 0
    for _ in range(config.epochs):
        head.train()
        order = torch.randperm(len(x), generator=generator)
        epoch_loss = 0.0
        for start in range(0, len(x), config.batch_size):
            index = order[start:start + config.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, config)
            logits = head(x[index].to(target_device))
            target = y[index].to(target_device)
            loss = criterion(logits, target.float() if multi_label else target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += float(loss.detach()) * len(index)
            step += 1
        losses.append(epoch_loss / len(x))
    head.eval()
    with torch.no_grad():
        logits = torch.cat([head(x_test[s:s + 4096].to(target_device)).cpu() for s in range(0, len(x_test), 4096)])
    scores = torch.sigmoid(logits) if multi_label else logits
    item_scores = average_clips(scores.reshape(test.shape[0], test.shape[1], -1).numpy())
    return FCResult(classification_metrics(item_scores, test_targets, multi_label), losses, dataclasses.asdict(config))
