"""Top-1 / top-5 accuracy for ``Trainer.compute_metrics``, computed locally (no metric script download)."""

from __future__ import annotations

import numpy as np
from transformers import EvalPrediction


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the ``k`` highest logits (k is capped at the number of classes)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if labels.ndim == 2:  # soft / one-hot targets
        labels = labels.argmax(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"Expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}.")
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def compute_accuracy(eval_prediction: EvalPrediction) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` in percent, from the student's logits and the labels."""
    logits = eval_prediction.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    labels = eval_prediction.label_ids
    return {
        "top1": 100.0 * top_k_accuracy(logits, labels, 1),
        "top5": 100.0 * top_k_accuracy(logits, labels, 5),
    }
