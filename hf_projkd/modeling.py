"""The trainable unit: student + projector + feature normalisers in ONE ``nn.Module``.

Keeping them together means the optimizer, DDP (gradient all-reduce), autocast, ``torch.compile``, gradient
clipping and checkpoints all see the projector: leaving it outside is the method's best-known pitfall.
The teacher is not part of it: the trainer runs it without autograd and passes its outputs in.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn
from transformers.utils import ModelOutput

from .families import ModelAdapter, adapter_for
from .losses import FEATURE_LOSSES, classification_loss, dkd_loss, hard_labels, kd_loss
from .projector import build_feature_norm, build_projector


@dataclass(frozen=True)
class LossSettings:
    """The loss knobs the module needs, taken from ``DistillationArguments`` (where the defaults live)."""

    feature_loss: str
    feature_loss_weight: float
    logsum_exponent: float
    logit_loss: str
    logit_loss_weight: float
    temperature: float
    dkd_alpha: float
    dkd_beta: float
    ce_weight: float
    label_smoothing: float

    @classmethod
    def from_args(cls, args: object) -> LossSettings:
        values = {f.name: getattr(args, f.name) for f in fields(cls) if f.name != "label_smoothing"}
        return cls(**values, label_smoothing=getattr(args, "label_smoothing_factor", 0.0))


@dataclass
class DistillationOutput(ModelOutput):
    """Output of ``DistillationModel``: total loss, inference logits and the unweighted loss components (and, at
    evaluation, the teacher's logits on the same batch when the trainer measures them)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    loss_ce: torch.Tensor | None = None
    loss_logit: torch.Tensor | None = None
    loss_feature: torch.Tensor | None = None


class DistillationModel(nn.Module):
    """Student, projector and normalisers; ``forward`` returns the SRD loss when given teacher outputs.

    Total loss (docs/method.md): ``ce_weight * CE + logit_loss_weight * KL(p_t || p_s) + feature_loss_weight *
    log(sum |BN(z_s W + b) - BN(z_t)|^alpha)``; a term whose teacher output is not given is left out. In eval
    mode it runs the student alone and the loss is the cross-entropy of the inference logits.

    ``compile_loss_terms`` compiles everything after the student's forward (projector, both norms, LogSum, KL / DKD,
    CE) into one region: a handful of fused kernels instead of a few dozen small launches per step on a GPU.
    """

    config = None  # no config of its own; Trainer reads `model.config` (label smoothing, use_cache), None-safe

    def __init__(
        self,
        student: nn.Module,
        student_feature_dim: int,
        teacher_feature_dim: int,
        settings: LossSettings,
        projector: str = "linear",
        feature_norm: str = "batchnorm",
        adapter: ModelAdapter | None = None,
        sync_feature_norm: bool = False,
    ) -> None:
        super().__init__()
        self.student = student
        self.settings = settings
        self.student_features = adapter if adapter is not None else adapter_for(student)
        self.feature_dims = (student_feature_dim, teacher_feature_dim)
        if settings.feature_loss_weight > 0:
            self.projector = build_projector(projector, student_feature_dim, teacher_feature_dim)
            self.student_norm = build_feature_norm(feature_norm, teacher_feature_dim, sync=sync_feature_norm)
            self.teacher_norm = build_feature_norm(feature_norm, teacher_feature_dim, sync=sync_feature_norm)
        else:  # no feature term: no unused parameters for DDP to complain about
            self.projector = self.student_norm = self.teacher_norm = None
        self.register_state_dict_post_hook(_contiguous_state)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
    ) -> DistillationOutput:
        out = self.student_features(pixel_values)
        if not self.training:  # evaluation: the student alone, CE of its inference logits
            loss = classification_loss(out.logits, labels) if labels is not None else None
            return DistillationOutput(loss=loss, logits=out.logits)

        s = self.settings
        if s.ce_weight > 0 or s.logit_loss == "dkd":
            self._need(labels)
        if teacher_features is not None and self.projector is not None:
            self._check_dims(out.features, teacher_features)
        terms = self._loss_terms if self._compiled_terms is None else self._compiled_terms
        loss, parts = terms(out.class_logits, out.distillation_logits, out.features, labels, teacher_logits,
                            teacher_features)
        return DistillationOutput(loss=loss, logits=out.logits, **parts)

    def _loss_terms(
        self, class_logits: torch.Tensor, distillation_logits: torch.Tensor, features: torch.Tensor,
        labels: torch.Tensor | None, teacher_logits: torch.Tensor | None, teacher_features: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total and each unweighted term, from the student's outputs and the teacher's."""
        s = self.settings
        parts: dict[str, torch.Tensor] = {}
        weights: dict[str, float] = {}
        if s.ce_weight > 0:
            parts["loss_ce"] = classification_loss(class_logits, labels, s.label_smoothing)
            weights["loss_ce"] = s.ce_weight
        if teacher_logits is not None and s.logit_loss != "none" and s.logit_loss_weight > 0:
            parts["loss_logit"] = self._logit_loss(distillation_logits, teacher_logits, labels)
            weights["loss_logit"] = s.logit_loss_weight
        if teacher_features is not None and self.projector is not None:
            parts["loss_feature"] = self.feature_loss(features, teacher_features)
            weights["loss_feature"] = s.feature_loss_weight
        return sum(weights[name] * value for name, value in parts.items()), parts

    _compiled_terms = None

    def compile_loss_terms(self, backend: str | None = None, mode: str | None = None) -> None:
        """Compile the loss terms (see the class docstring); ``backend`` / ``mode`` as ``torch.compile``'s."""
        self._compiled_terms = torch.compile(self._loss_terms, backend=backend or "inductor", mode=mode,
                                             dynamic=False)

    def _check_dims(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> None:
        for side, tensor, dim in (("student", student_features, self.feature_dims[0]),
                                  ("teacher", teacher_features, self.feature_dims[1])):
            if tensor.dim() != 2 or tensor.shape[1] != dim:
                raise ValueError(
                    f"The {side}'s features have shape {tuple(tensor.shape)}, the projector was built for (batch, "
                    f"{dim}). Pass {side}_feature_dim / {side}_feature_module for the features you mean, or (cached "
                    "teacher outputs) store 'teacher_features' of the teacher's pooled pre-logit dim."
                )

    def project(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(BN(z_s W + b), BN(z_t))`` in float32: the two sides the feature loss compares."""
        projected = self.projector(student_features)
        return self.student_norm(projected.float()), self.teacher_norm(teacher_features.float())

    def feature_loss(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        student_side, teacher_side = self.project(student_features, teacher_features)
        if self.settings.feature_loss == "logsum":
            return FEATURE_LOSSES["logsum"](student_side, teacher_side, self.settings.logsum_exponent)
        return FEATURE_LOSSES[self.settings.feature_loss](student_side, teacher_side)

    def _logit_loss(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        s = self.settings
        if s.logit_loss == "kl":
            return kd_loss(student_logits, teacher_logits, s.temperature)
        return dkd_loss(
            student_logits, teacher_logits, hard_labels(self._need(labels)), s.dkd_alpha, s.dkd_beta, s.temperature
        )

    @staticmethod
    def _need(labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError(
                "The cross-entropy and DKD terms need labels, but the batch has no 'labels'. Return a 'labels' "
                "key from your collator / transform, or set ce_weight=0 and logit_loss='kl'."
            )
        return labels


def _contiguous_state(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
    """Checkpoints are safetensors files, which take only contiguous tensors: copy channels_last weights."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and not value.is_contiguous():
            state[key] = value.contiguous()
