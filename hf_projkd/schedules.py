"""The step learning-rate schedule of the CNN protocols (CRD on CIFAR, torchvision on ImageNet).

transformers ships no step-decay schedule and torch's ``MultiStepLR`` has no warmup, hence this small one.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


class StepDecay:
    """Linear warmup, then ``lr * gamma ** (number of milestones passed)``; a callable object so that the
    ``LambdaLR`` state (and so resuming) keeps it."""

    def __init__(self, milestones: list[int], gamma: float, warmup_steps: int) -> None:
        self.milestones, self.gamma, self.warmup_steps = sorted(milestones), gamma, warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.gamma ** sum(step >= m for m in self.milestones)


def step_decay_scheduler(
    optimizer: torch.optim.Optimizer, fractions: tuple[float, ...], rate: float, num_training_steps: int,
    warmup_steps: int,
) -> LambdaLR:
    """``StepDecay`` with milestones at ``fractions`` of ``num_training_steps`` (so a shorter run keeps the shape)."""
    milestones = sorted({max(1, round(f * num_training_steps)) for f in fractions})
    return LambdaLR(optimizer, StepDecay(milestones, rate, warmup_steps))
