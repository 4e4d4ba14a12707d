"""Batch collators: plain image stacking, and Mixup / CutMix with label-smoothed soft targets (DeiT's recipe).

Mixup (Zhang et al. 2018) blends each image with its partner, ``lam * x_i + (1 - lam) * x_j``; CutMix (Yun et al.
2019) pastes a box of the partner into it. The partner of sample ``i`` is sample ``B - 1 - i`` (the batch
reversed), and one ``lam ~ Beta(alpha, alpha)`` is drawn per batch. Targets become
``lam * smooth(y_i) + (1 - lam) * smooth(y_j)`` with ``smooth(y) = (1 - eps) * onehot(y) + eps / C``, so the
cross-entropy on soft targets (``hf_projkd.losses.classification_loss``) already includes label smoothing.
The teacher sees the same mixed images as the student (the trainer feeds it ``pixel_values``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


def collate_images(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` (C, H, W) and hard ``labels`` into a batch, for evaluation or no-mixup training."""
    return {
        "pixel_values": torch.stack([torch.as_tensor(ex["pixel_values"]) for ex in examples]),
        "labels": torch.as_tensor([int(ex["labels"]) for ex in examples], dtype=torch.long),
    }


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B, C) targets ``(1 - smoothing) * onehot + smoothing / C``: each row sums to 1."""
    if labels.dim() != 1:
        raise ValueError(f"smooth_one_hot expects class indices of shape (B,), got {tuple(labels.shape)}.")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Labels must be in [0, {num_classes}), got values in [{labels.min().item()}, {labels.max().item()}]. "
            "Is num_classes right, and does the split have labels (ImageNet's 'test' split is unlabelled: -1)?"
        )
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32)
    targets.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)
    return targets


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """A random box ``(y0, y1, x0, x1)`` covering about ``1 - lam`` of the image, clipped at the borders."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (1,)).item())
    cx = int(torch.randint(0, width, (1,)).item())
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


@dataclass
class MixupCollator:
    """Collate examples into a batch with Mixup or CutMix applied and soft (B, C) label-smoothed targets.

    Defaults are DeiT's: mixup alpha 0.8, cutmix alpha 1.0, applied to every batch, a 50/50 switch between the
    two, label smoothing 0.1. ``alpha = 0`` disables that method; with both 0 only label smoothing remains.
    Randomness comes from torch's global generator (seeded per data-loader worker by PyTorch).
    """

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"MixupCollator needs num_classes >= 2, got {self.num_classes}.")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 disables it), got {getattr(self, name)}.")
        for name in ("prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate_images(examples)
        pixel_values, labels = self.mix(batch["pixel_values"], batch["labels"])
        return {"pixel_values": pixel_values, "labels": labels}

    def sample(self) -> tuple[str, float]:
        """``(mode, lam)`` for one batch: mode is 'mixup', 'cutmix' or 'none' (lam = 1)."""
        enabled = [m for m, a in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if a > 0]
        if not enabled or torch.rand(()).item() >= self.prob:
            return "none", 1.0
        mode = enabled[0]
        if len(enabled) == 2:
            mode = "cutmix" if torch.rand(()).item() < self.switch_prob else "mixup"
        alpha = self.cutmix_alpha if mode == "cutmix" else self.mixup_alpha
        lam = torch.distributions.Beta(alpha, alpha).sample().item()
        return mode, float(lam)

    def mix(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed (B, C, H, W) images and (B, num_classes) targets for hard labels (B,)."""
        mode, lam = self.sample()
        return self.apply(pixel_values, labels, mode, lam)

    def apply(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, mode: str, lam: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply ``mode`` with mixing weight ``lam`` (deterministic given the box draw); returns images, targets."""
        partner = pixel_values.flip(0)
        if mode == "mixup":
            pixel_values = pixel_values * lam + partner * (1.0 - lam)
        elif mode == "cutmix":
            height, width = pixel_values.shape[-2:]
            y0, y1, x0, x1 = cutmix_box(height, width, lam)
            pixel_values = pixel_values.clone()
            pixel_values[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)  # the area actually pasted
        elif mode != "none":
            raise ValueError(f"mode must be 'mixup', 'cutmix' or 'none', got {mode!r}.")
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        return pixel_values, targets * lam + targets.flip(0) * (1.0 - lam)
