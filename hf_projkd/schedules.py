"""The step learning-rate schedule of the CNN protocols (CRD on CIFAR, torchvision on ImageNet), for Trainers."""

from __future__ import annotations

from typing import Any

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


class StepDecayMixin:
    """Trainer mixin: ``StepDecay`` at the steps ``lr_milestones`` returns (warmup from the arguments); without
    milestones, the Trainer's own ``lr_scheduler_type``."""

    lr_decay_rate: float = 0.1

    def lr_milestones(self, num_training_steps: int) -> list[int]:
        """Optimizer steps at which the lr is multiplied by ``lr_decay_rate``; override."""
        return []

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        milestones = self.lr_milestones(num_training_steps)
        if self.lr_scheduler is None and milestones:
            schedule = StepDecay(milestones, self.lr_decay_rate, self.args.get_warmup_steps(num_training_steps))
            self.lr_scheduler = LambdaLR(optimizer if optimizer is not None else self.optimizer, schedule)
            self._created_lr_scheduler = True  # so the Trainer rebuilds it on a later train() call
        return super().create_scheduler(num_training_steps, optimizer)
