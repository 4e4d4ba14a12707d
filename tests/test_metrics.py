"""Metrics through ``evaluate``, offline (issue 14): the shipped top-k module, and teacher-student agreement."""

from __future__ import annotations

import evaluate
import numpy as np
import pytest
import torch

from hf_projkd.metrics import TOP_K_ACCURACY_PATH, agreement_metrics, load_top_k_accuracy, top_k_accuracy


def _reference_top_k(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The hand-written top-k the library used before (argpartition over the logits), as the reference."""
    if labels.ndim == 2:
        labels = labels.argmax(-1)
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return 100.0 * float((top == labels[:, None]).any(axis=1).mean())


def test_the_metric_module_loads_offline_from_the_package_with_its_metric_info(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(TOP_K_ACCURACY_PATH)
    assert isinstance(metric, evaluate.EvaluationModule) and metric.name == "top_k_accuracy"
    assert "top-k" in metric.description.lower() and "@misc" in metric.citation
    assert set(metric.features) == {"predictions", "references"}
    assert metric.compute(predictions=[[2, 0], [1, 2]], references=[0, 1], k=(1, 2)) == {"top1": 0.5, "top2": 1.0}
    with pytest.raises(ValueError, match="needs at least 5 ranked classes"):
        metric.compute(predictions=[[2, 0]], references=[0], k=(5,))
    assert load_top_k_accuracy() is load_top_k_accuracy()  # loaded once per process


@pytest.mark.parametrize("classes, targets", [(10, "hard"), (1000, "hard"), (7, "soft"), (3, "one-hot")])
def test_top_k_through_evaluate_equals_the_hand_written_reference(classes, targets):
    rng = np.random.default_rng(classes)
    logits = rng.normal(size=(257, classes)).astype(np.float32)
    labels = rng.integers(0, classes, 257)
    if targets == "soft":  # mixup-style targets: the class with the largest weight counts
        labels = rng.dirichlet(np.ones(classes), 257).astype(np.float32)
    elif targets == "one-hot":
        labels = np.eye(classes, dtype=np.float32)[labels]
    ours = top_k_accuracy(logits, labels)
    assert ours == {"top1": _reference_top_k(logits, labels, 1), "top5": _reference_top_k(logits, labels, 5)}


def test_agreement_and_kl_of_teacher_and_student():
    teacher = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    metrics = agreement_metrics(student.numpy(), teacher.numpy())
    assert metrics["agreement"] == pytest.approx(75.0)  # all but the second sample predict the same class
    p_t, log_p_s = teacher.softmax(-1), student.log_softmax(-1)
    expected = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    assert metrics["kl"] == pytest.approx(float(expected), rel=1e-6)
    assert agreement_metrics(teacher.numpy(), teacher.numpy()) == {"agreement": 100.0, "kl": pytest.approx(0.0)}
