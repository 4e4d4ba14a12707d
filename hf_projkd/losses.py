"""Pure loss functions of the method: LogSum feature loss, KD, DKD and (soft-target) cross-entropy.

Every function casts its inputs to float32 first: the 4th powers of the LogSum loss overflow fp16 and lose
precision in bf16, and the softmaxes of the logit losses are more stable in fp32. All of them reduce to a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOGSUM_EPS = 1e-12
"""Added inside the log of the LogSum loss so identical features give a finite loss (log(eps)), not -inf."""


def logsum_feature_loss(student: torch.Tensor, teacher: torch.Tensor, exponent: float = 4.0) -> torch.Tensor:
    """LogSum feature loss of SRD: ``log( sum_{b,d} |student - teacher| ** exponent )``.

    Both inputs are (B, D) features that are already normalised (batch norm in the paper). The log acts as a
    soft maximum: its gradient is the per-element term divided by the total, so elements that already match
    contribute little when others are far apart. Finite (and with zero gradient) when the two are identical.
    """
    _check_same_shape(student, teacher, "logsum_feature_loss")
    if exponent <= 0:
        raise ValueError(f"logsum_feature_loss: exponent must be > 0, got {exponent}.")
    diff = (student.float() - teacher.float()).abs()
    return torch.log(diff.pow(exponent).sum() + LOGSUM_EPS)


def l2_feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between features, ``mean_{b,d} (student - teacher)^2`` (the paper's "L2" ablation)."""
    _check_same_shape(student, teacher, "l2_feature_loss")
    return F.mse_loss(student.float(), teacher.float())


def smooth_l1_feature_loss(student: torch.Tensor, teacher: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth-L1 (Huber) between features, averaged over batch and dims (the loss of the follow-up VkD)."""
    _check_same_shape(student, teacher, "smooth_l1_feature_loss")
    return F.smooth_l1_loss(student.float(), teacher.float(), beta=beta)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton KD: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes and averaged over the batch."""
    _check_same_shape(student_logits, teacher_logits, "kd_loss")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``, each scaled by ``T^2``.

    TCKD is the KL between the binary (target, rest) distributions of teacher and student; NCKD is the KL
    between their distributions over the non-target classes only (target logit masked out before softmax).
    ``labels`` are class indices (B,).
    """
    _check_same_shape(student_logits, teacher_logits, "dkd_loss")
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    target = F.one_hot(labels.long(), s.shape[-1]).bool()

    p_s, p_t = F.softmax(s, dim=-1), F.softmax(t, dim=-1)
    binary_s = torch.stack([(p_s * target).sum(-1), (p_s * ~target).sum(-1)], dim=-1)
    binary_t = torch.stack([(p_t * target).sum(-1), (p_t * ~target).sum(-1)], dim=-1)
    tckd = F.kl_div(torch.log(binary_s.clamp_min(1e-12)), binary_t, reduction="batchmean")

    masked = -1e4 * target  # large finite value: -inf would make 0 * -inf = nan in the KL sum
    log_q_s = F.log_softmax(s + masked, dim=-1)
    log_q_t = F.log_softmax(t + masked, dim=-1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s) * ~target).sum(-1).mean()
    return (alpha * tckd + beta * nckd) * temperature**2


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy on hard labels (B,) with optional label smoothing, or on soft targets (B, C) from mixup.

    Soft targets are used as given: mixup collators already fold label smoothing into them.
    """
    logits = logits.float()
    if labels.dim() == logits.dim():
        if labels.shape != logits.shape:
            raise ValueError(
                f"classification_loss: soft targets must match the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(labels.shape)}."
            )
        return torch.sum(-labels.float() * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, labels.long(), label_smoothing=label_smoothing)


def hard_labels(labels: torch.Tensor) -> torch.Tensor:
    """Class indices from hard (B,) or soft (B, C) labels; DKD needs the target class of each sample."""
    return labels.argmax(dim=-1) if labels.dim() == 2 else labels


FEATURE_LOSSES = {
    "logsum": logsum_feature_loss,
    "l2": l2_feature_loss,
    "smooth_l1": smooth_l1_feature_loss,
}
LOGIT_LOSSES = ("kl", "dkd", "none")


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name}: student and teacher tensors must have the same shape, got {tuple(a.shape)} (student) "
            f"and {tuple(b.shape)} (teacher). For features, the projector maps the student's dim to the "
            "teacher's; for logits, student and teacher must predict the same classes."
        )
