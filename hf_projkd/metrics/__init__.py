"""Evaluation metrics through ``evaluate``, offline: top-k accuracy (a metric module shipped in the package) and the
teacher-student agreement of a distillation run."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import evaluate
import numpy as np
import torch

TOP_K_ACCURACY_PATH = str(Path(__file__).resolve().parent / "top_k_accuracy")
"""``evaluate.load(TOP_K_ACCURACY_PATH)`` loads the metric from the installed package: no network needed."""


@lru_cache(maxsize=1)
def load_top_k_accuracy() -> evaluate.EvaluationModule:
    return evaluate.load(TOP_K_ACCURACY_PATH)


def _hard(labels: np.ndarray) -> np.ndarray:
    return labels.argmax(-1) if labels.ndim == 2 else labels  # soft / one-hot targets -> class index


def top_k_accuracy(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                   k: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` in percent, through the shipped ``evaluate`` metric; ``k`` above the number of
    classes is capped (top-5 of a 3-class problem is top-3)."""
    scores = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    if scores.dim() != 2:
        raise ValueError(f"Expected logits of shape (N, C), got {tuple(scores.shape)}.")
    depth = min(max(k), scores.shape[1])
    ranked = scores.topk(depth, dim=1).indices.numpy()
    result = load_top_k_accuracy().compute(
        predictions=ranked, references=_hard(np.asarray(labels)), k=tuple(min(v, depth) for v in k)
    )
    return {f"top{v}": 100.0 * result[f"top{min(v, depth)}"] for v in k}


def agreement_metrics(student_logits: np.ndarray, teacher_logits: np.ndarray) -> dict[str, float]:
    """Share (%) of samples where student and teacher predict the same class, and the mean KL(teacher || student)
    of their softmaxes at T = 1 (summed over classes, averaged over samples)."""
    student = torch.as_tensor(np.asarray(student_logits, dtype=np.float32))
    teacher = torch.as_tensor(np.asarray(teacher_logits, dtype=np.float32))
    if student.shape != teacher.shape:
        raise ValueError(f"Student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ.")
    log_s, log_t = student.log_softmax(-1), teacher.log_softmax(-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    same = (student.argmax(-1) == teacher.argmax(-1)).float().mean()
    return {"agreement": 100.0 * float(same), "kl": float(kl)}
