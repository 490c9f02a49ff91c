"""Classification metrics from a confusion matrix (rows = true class, columns = prediction)."""
from __future__ import annotations

import torch


def confusion(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    idx = y_true.to(torch.int64) * num_classes + y_pred.to(torch.int64)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def summarize(conf: torch.Tensor) -> dict:
    """accuracy, balanced accuracy (mean recall) and per-class recall / precision.

    A class with no true samples has recall None; one never predicted has precision None
    (undefined, not 0); means skip None.
    """
    conf = conf.to(torch.float64)
    diag, true, pred = conf.diagonal(), conf.sum(1), conf.sum(0)
    recall = [float(d / t) if t > 0 else None for d, t in zip(diag, true)]
    precision = [float(d / p) if p > 0 else None for d, p in zip(diag, pred)]
    defined = [r for r in recall if r is not None]
    total = float(conf.sum())
    return {
        "accuracy": float(diag.sum() / total) if total else None,
        "balanced_accuracy": sum(defined) / len(defined) if defined else None,
        "recall": recall,
        "precision": precision,
        "count": [int(t) for t in true],
    }
