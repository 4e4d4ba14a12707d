"""Diagnostics of what the projector learns, logged through the Trainer's normal logging.

The paper's argument (docs/method.md, "Why it works") is about the projector ``p = z_s W + b``: under an L2 matching
loss ``dW/dt = C_st - C_s W``, so W accumulates the student-teacher cross-correlation; without batch norm many
singular values of W collapse; and MLP projectors decorrelate their output from their input.
``ProjectorDiagnosticsCallback`` makes these visible on any run: every N optimizer steps it records

- the singular values of W (``projector_weight``: the last ``nn.Linear`` of an MLP projector) and their summary:
  largest, median, smallest, effective rank and the share of values near zero;
- the cross-correlation between the projector's input and output on one training batch, each side standardised
  per dimension over the batch (batch norm without affine parameters), summarised by the mean absolute value
  on its diagonal and off it;
- ``linear_r2``: the share of the (standardised) output variance that a linear map of the input explains, on the
  projector inputs of the last few hundred samples pushed through the current projector. Basis-free: 1 for any
  full-rank linear projector, lower when an MLP projector decouples its output from its input.

The latest values are merged into the next ``logs`` dict the Trainer hands its callbacks (so TensorBoard,
trackio and the console receive them) and into ``state.log_history``; the full history stays on the callback
for ``hf_projkd.plotting``. Attach it with ``add_projector_diagnostics(trainer)``, which puts it first in the
callback list so that the reporting callbacks see the merged values.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from .projector import projector_weight

logger = logging.get_logger(__name__)

LOG_PREFIX = "projector/"
DEFAULT_NEAR_ZERO = 1e-2
"""A singular value counts as collapsed when it is below this fraction of the largest one."""
STANDARDISE_EPS = 1e-5


# -- the measures ------------------------------------------------------------------------------------------------
def effective_rank(singular_values: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank: ``exp(entropy(s / sum(s)))``; d for d equal values, 1 for a rank-1 map."""
    s = singular_values.double().clamp_min(0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def spectrum_summary(singular_values: torch.Tensor, near_zero: float = DEFAULT_NEAR_ZERO) -> dict[str, float]:
    """Largest, median, smallest singular value, effective rank, and share of values below ``near_zero * max``."""
    s = singular_values.detach().double().flatten()
    if s.numel() == 0:
        raise ValueError("spectrum_summary needs at least one singular value, got an empty tensor.")
    top = float(s.max())
    return {
        "sv_top": top,
        "sv_median": float(s.median()),
        "sv_min": float(s.min()),
        "effective_rank": effective_rank(s),
        "sv_near_zero_share": float((s < near_zero * top).double().mean()) if top > 0 else 1.0,
    }


def standardised_cross_correlation(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """(d_in, d_out) correlation between projector input and output dimensions over a batch.

    Each side is batch-normalised without affine parameters (``(x - mean) / sqrt(var + eps)``, biased variance,
    as SRD's normaliser), so entry (i, j) is the Pearson correlation of input dim i with output dim j.
    """
    if inputs.dim() != 2 or outputs.dim() != 2 or inputs.shape[0] != outputs.shape[0]:
        raise ValueError(
            f"Expected (batch, d_in) inputs and (batch, d_out) outputs of the same batch, got {tuple(inputs.shape)} "
            f"and {tuple(outputs.shape)}."
        )
    if inputs.shape[0] < 2:
        raise ValueError(f"A correlation over the batch needs at least 2 samples, got {inputs.shape[0]}.")
    x, y = _standardise(inputs.detach().double()), _standardise(outputs.detach().double())
    return (x.T @ y / x.shape[0]).float()


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + STANDARDISE_EPS)


def correlation_summary(correlation: torch.Tensor) -> dict[str, float]:
    """Mean |correlation| on the diagonal (input dim i vs output dim i, first ``min(d_in, d_out)``) and off it.

    An identity-like projector keeps each output tied to its own input (diagonal near 1); the paper's MLP
    projectors lose that link. The diagonal is only meaningful relative to its start when W has no aligned basis.
    """
    c = correlation.detach().abs().double()
    k = min(c.shape)
    diagonal = torch.diagonal(c[:k, :k])
    off = (c.sum() - diagonal.sum()) / max(c.numel() - k, 1)
    return {"corr_diag": float(diagonal.mean()), "corr_offdiag": float(off)}


def linear_predictability(inputs: torch.Tensor, outputs: torch.Tensor, ridge: float = 1e-4) -> float:
    """R^2 of the best (ridge) linear map from standardised inputs to standardised outputs, averaged over outputs.

    ``1 - ||Y - X B||^2 / ||Y||^2`` with ``B = (X^T X + ridge * N * I)^-1 X^T Y``. Needs more samples than input
    dims (N > d_in), else any output is fitted exactly and the value says nothing.
    """
    if inputs.shape[0] <= inputs.shape[1]:
        raise ValueError(
            f"linear_predictability needs more samples than input dims, got {inputs.shape[0]} samples of "
            f"{inputs.shape[1]} dims: raise the number of samples (r2_samples)."
        )
    x, y = _standardise(inputs.detach().double()), _standardise(outputs.detach().double())
    gram = x.T @ x + ridge * x.shape[0] * torch.eye(x.shape[1], dtype=x.dtype)
    fit = x @ torch.linalg.solve(gram, x.T @ y)
    total = (y**2).sum()
    return float(1.0 - ((y - fit) ** 2).sum() / total) if total > 0 else 0.0


@dataclass
class ProjectorSnapshot:
    """The diagnostics at one optimizer step (``corr_*`` are None when no batch was captured, e.g. at step 0)."""

    step: int
    singular_values: list[float]
    summary: dict[str, float] = field(default_factory=dict)
    corr_diag: float | None = None
    corr_offdiag: float | None = None
    linear_r2: float | None = None

    def to_logs(self) -> dict[str, float]:
        logs = {f"{LOG_PREFIX}{k}": round(v, 6) for k, v in self.summary.items()}
        if self.corr_diag is not None:
            logs[f"{LOG_PREFIX}corr_diag"] = round(self.corr_diag, 6)
            logs[f"{LOG_PREFIX}corr_offdiag"] = round(self.corr_offdiag, 6)
        if self.linear_r2 is not None:
            logs[f"{LOG_PREFIX}linear_r2"] = round(self.linear_r2, 6)
        return logs

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProjectorSnapshot:
        return cls(**values)


# -- the callback ------------------------------------------------------------------------------------------------
def unwrap_distillation_model(model: nn.Module) -> nn.Module:
    """The ``DistillationModel`` under DDP / FSDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers."""
    for _ in range(4):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            break
        model = inner
    return model


class ProjectorDiagnosticsCallback(TrainerCallback):
    """Every ``every_n_steps`` optimizer steps: projector spectrum + input/output correlation (see module doc).

    Args:
        every_n_steps: period in optimizer steps; None: the run's ``logging_steps`` (so each value is logged on
            the step it was measured).
        near_zero: a singular value below ``near_zero * largest`` counts in ``sv_near_zero_share``.
        r2_samples: how many recent projector inputs ``linear_r2`` uses (kept on their device between
            measurements); 0 turns it off. It is skipped while fewer than 2 x input-dim samples were seen.

    ``history`` holds one ``ProjectorSnapshot`` per measurement (step 0 = the initial projector, spectrum only);
    ``last_correlation`` is the latest (d_in, d_out) correlation matrix.
    """

    def __init__(
        self, every_n_steps: int | None = None, near_zero: float = DEFAULT_NEAR_ZERO, r2_samples: int = 512
    ) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 (or None for logging_steps), got {every_n_steps}.")
        if r2_samples < 0:
            raise ValueError(f"r2_samples must be >= 0 (0 turns linear_r2 off), got {r2_samples}.")
        if not 0.0 < near_zero < 1.0:
            raise ValueError(f"near_zero is a fraction of the largest singular value in (0, 1), got {near_zero}.")
        self.every_n_steps = every_n_steps
        self.near_zero = near_zero
        self.r2_samples = r2_samples
        self._recent_inputs: deque[torch.Tensor] = deque()
        self.history: list[ProjectorSnapshot] = []
        self.last_correlation: torch.Tensor | None = None
        self._pending: dict[str, float] = {}
        self._armed = False
        self._measuring = False  # our own projector forward (linear_r2) must not feed the hook's buffers
        self._captured: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    # -- Trainer events --------------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.every_n_steps is None:
            steps = args.logging_steps
            self.every_n_steps = max(1, int(steps) if steps >= 1 else math.ceil(steps * max(state.max_steps, 1)))
        projector = self._projector(kwargs.get("model"))
        if self._hook is not None:
            self._hook.remove()
        self._hook = projector.register_forward_hook(self._capture)
        self._recent_inputs.clear()
        if not self.history or self.history[-1].step != state.global_step:
            self.history.append(self._snapshot(projector, state.global_step))

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # the step about to run ends at global_step + 1: capture its first micro-batch when that is a measurement
        self._armed = (state.global_step + 1) % self.every_n_steps == 0
        self._captured = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._armed = False
        if state.global_step % self.every_n_steps != 0:
            return
        snapshot = self._snapshot(self._projector(kwargs.get("model")), state.global_step)
        self.history.append(snapshot)
        self._pending = snapshot.to_logs()
        self._captured = None

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ):
        """Merges the latest measurement into this log (the dict every callback receives) and the log history."""
        if not self._pending or logs is None:
            return
        logs.update(self._pending)
        if state.log_history:
            state.log_history[-1].update(self._pending)
        self._pending = {}

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._recent_inputs.clear()

    # -- helpers ---------------------------------------------------------------------------------------------
    def _capture(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if self._measuring:
            return
        if self.r2_samples > 0 and module.training:
            self._recent_inputs.append(inputs[0].detach())
            while sum(x.shape[0] for x in self._recent_inputs) - self._recent_inputs[0].shape[0] >= self.r2_samples:
                self._recent_inputs.popleft()
        if self._armed and self._captured is None and module.training and isinstance(output, torch.Tensor):
            self._captured = (inputs[0].detach().float().cpu(), output.detach().float().cpu())

    def _snapshot(self, projector: nn.Module, step: int) -> ProjectorSnapshot:
        with torch.no_grad():
            weight = projector_weight(projector).detach().float().cpu()
            singular_values = torch.linalg.svdvals(weight)
        snapshot = ProjectorSnapshot(
            step=step,
            singular_values=[float(v) for v in singular_values],
            summary=spectrum_summary(singular_values, self.near_zero),
        )
        if self._captured is not None and self._captured[0].shape[0] >= 2:
            correlation = standardised_cross_correlation(*self._captured)
            self.last_correlation = correlation
            measures = correlation_summary(correlation)
            snapshot.corr_diag, snapshot.corr_offdiag = measures["corr_diag"], measures["corr_offdiag"]
        snapshot.linear_r2 = self._linear_r2(projector)
        return snapshot

    def _linear_r2(self, projector: nn.Module) -> float | None:
        if not self._recent_inputs:
            return None
        inputs = torch.cat(list(self._recent_inputs))[-self.r2_samples :]
        if inputs.shape[0] < 2 * inputs.shape[1]:
            return None
        self._measuring = True
        try:
            with torch.no_grad():
                outputs = projector(inputs.to(projector_weight(projector).dtype))
        finally:
            self._measuring = False
        return linear_predictability(inputs.float().cpu(), outputs.float().cpu())

    @staticmethod
    def _projector(model: nn.Module | None) -> nn.Module:
        if model is None:
            raise ValueError("ProjectorDiagnosticsCallback got no model from the Trainer (kwargs['model']).")
        projector = getattr(unwrap_distillation_model(model), "projector", None)
        if projector is None:
            raise ValueError(
                f"ProjectorDiagnosticsCallback needs a DistillationModel with a projector, got "
                f"{type(unwrap_distillation_model(model)).__name__} without one. The projector only exists when the "
                "feature term is on: set feature_loss_weight > 0, or drop the callback for this run."
            )
        return projector

    def history_dicts(self) -> list[dict[str, Any]]:
        """The history as JSON-ready dicts (``ProjectorSnapshot.from_dict`` reads them back)."""
        return [asdict(snapshot) for snapshot in self.history]


def add_projector_diagnostics(
    trainer: Any, every_n_steps: int | None = None, near_zero: float = DEFAULT_NEAR_ZERO, r2_samples: int = 512
) -> ProjectorDiagnosticsCallback:
    """Create the callback and put it FIRST among the trainer's callbacks.

    Callbacks receive ``on_log`` in list order, and the reporting ones (TensorBoard, trackio, console) are added
    before user callbacks: only a callback ahead of them can add its values to the logs they report.
    """
    model = unwrap_distillation_model(trainer.model)
    if getattr(model, "projector", None) is None:
        raise ValueError(
            "This trainer's model has no projector (feature_loss_weight=0 or not a DistillationTrainer): there is "
            "nothing to diagnose. Set feature_loss_weight > 0."
        )
    callback = ProjectorDiagnosticsCallback(every_n_steps, near_zero, r2_samples)
    trainer.callback_handler.callbacks.insert(0, callback)
    return callback
