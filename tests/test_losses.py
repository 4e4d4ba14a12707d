import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_projkd.losses import (
    classification_loss,
    dkd_loss,
    kd_loss,
    l2_feature_loss,
    logsum_feature_loss,
    smooth_l1_feature_loss,
)


def test_logsum_matches_hand_computed_value():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    # |1|^4 + |2|^4 = 17
    assert logsum_feature_loss(student, teacher).item() == pytest.approx(math.log(17.0), abs=1e-6)
    # exponent 2: 1 + 4 = 5
    assert logsum_feature_loss(student, teacher, exponent=2.0).item() == pytest.approx(math.log(5.0), abs=1e-6)


def test_logsum_is_finite_with_zero_gradient_when_features_are_identical():
    student = torch.randn(4, 8, requires_grad=True)
    loss = logsum_feature_loss(student, student.detach().clone())
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(student.grad).all()
    assert torch.count_nonzero(student.grad) == 0


def test_logsum_gradient_is_soft_maximum():
    """d/dx log(sum |d|^4) = 4 d^3 / sum |d|^4: the largest mismatch dominates the gradient."""
    student = torch.tensor([[3.0, 1.0]], requires_grad=True)
    logsum_feature_loss(student, torch.zeros(1, 2)).backward()
    total = 3.0**4 + 1.0
    expected = torch.tensor([[4 * 27 / total, 4 * 1 / total]])
    torch.testing.assert_close(student.grad, expected)


def test_logsum_is_computed_in_float32_for_half_inputs():
    a = torch.randn(16, 32) * 30  # 4th powers of ~100 overflow fp16
    b = torch.randn(16, 32) * 30
    reference = logsum_feature_loss(a, b)
    for dtype in (torch.float16, torch.bfloat16):
        low = logsum_feature_loss(a.to(dtype), b.to(dtype))
        assert low.dtype == torch.float32 and torch.isfinite(low)
        assert low.item() == pytest.approx(reference.item(), rel=1e-2)


def test_logsum_rejects_shape_mismatch_and_bad_exponent():
    with pytest.raises(ValueError, match="same shape"):
        logsum_feature_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="exponent"):
        logsum_feature_loss(torch.zeros(2, 3), torch.zeros(2, 3), exponent=0.0)


def test_l2_and_smooth_l1_values():
    a, b = torch.tensor([[0.0, 3.0]]), torch.tensor([[0.5, 0.0]])
    assert l2_feature_loss(a, b).item() == pytest.approx((0.25 + 9.0) / 2)
    # smooth L1 (beta 1): 0.5*0.5^2 = 0.125 and 3 - 0.5 = 2.5
    assert smooth_l1_feature_loss(a, b).item() == pytest.approx((0.125 + 2.5) / 2)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_kd_matches_hand_computed_kl():
    s = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
    t = np.array([[2.0, 1.0, 0.0], [1.0, 1.0, -2.0]])
    for temperature in (1.0, 4.0):
        p_s, p_t = _softmax(s / temperature), _softmax(t / temperature)
        expected = (p_t * (np.log(p_t) - np.log(p_s))).sum(-1).mean() * temperature**2
        got = kd_loss(torch.tensor(s), torch.tensor(t), temperature).item()
        assert got == pytest.approx(expected, rel=1e-5)
    assert kd_loss(torch.tensor(s), torch.tensor(s)).item() == pytest.approx(0.0, abs=1e-6)


def test_dkd_matches_hand_computed_decoupled_terms():
    s = np.array([[1.0, 2.0, 0.5, -1.0], [0.3, -1.0, 1.0, 0.0]])
    t = np.array([[2.0, 1.0, 0.0, 0.5], [1.0, 1.0, -2.0, 0.2]])
    labels = np.array([0, 2])
    alpha, beta, temperature = 1.0, 8.0, 4.0
    p_s, p_t = _softmax(s / temperature), _softmax(t / temperature)
    tckd = nckd = 0.0
    for i, y in enumerate(labels):
        bs = np.array([p_s[i, y], 1 - p_s[i, y]])
        bt = np.array([p_t[i, y], 1 - p_t[i, y]])
        tckd += (bt * np.log(bt / bs)).sum()
        others = [c for c in range(4) if c != y]
        qs = _softmax(s[i, others] / temperature)
        qt = _softmax(t[i, others] / temperature)
        nckd += (qt * np.log(qt / qs)).sum()
    expected = (alpha * tckd + beta * nckd) / len(labels) * temperature**2
    got = dkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(labels), alpha, beta, temperature).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_dkd_has_finite_gradients_when_student_equals_teacher():
    logits = torch.randn(4, 10, requires_grad=True)
    loss = dkd_loss(logits, logits.detach().clone(), torch.tensor([0, 3, 9, 2]))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    assert torch.isfinite(logits.grad).all()


def test_classification_loss_hard_smoothed_and_soft_targets():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1])
    assert classification_loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    smoothed = classification_loss(logits, labels, label_smoothing=0.1).item()
    log_p = F.log_softmax(logits, -1)
    targets = F.one_hot(labels, 3) * 0.9 + 0.1 / 3
    assert smoothed == pytest.approx(-(targets * log_p).sum(-1).mean().item(), rel=1e-6)
    # soft (mixup) targets equal to the smoothed one-hot give the same value
    assert classification_loss(logits, targets).item() == pytest.approx(smoothed, rel=1e-6)
    with pytest.raises(ValueError, match="soft targets"):
        classification_loss(logits, torch.zeros(2, 4))
