"""Projectors (student feature dim -> teacher feature dim) and the feature normalisers applied after them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import global_batch_moments, world_size

PROJECTORS = ("linear", "orthogonal", "mlp")
FEATURE_NORMS = ("batchnorm", "layernorm", "l2", "none")


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """The trainable map ``p = z_s W + b`` from student to teacher feature space.

    - ``linear`` (SRD default): ``nn.Linear(in_dim, out_dim)`` with bias and PyTorch's default init. Under the
      gradient flow of an L2 matching loss, ``dW/dt = C_st - C_s W``: W accumulates the student-teacher
      cross-correlation, which is why no hand-made relational loss is needed.
    - ``orthogonal`` (VkD): a bias-free linear map constrained to (semi-)orthogonal weights.
    - ``mlp``: Linear -> ReLU -> Linear (hidden = out_dim), for the paper's ablation; it tends to decorrelate
      its input from its output.
    """
    if in_dim <= 0 or out_dim <= 0:
        raise ValueError(f"Projector dims must be positive, got in_dim={in_dim}, out_dim={out_dim}.")
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "orthogonal":
        return nn.utils.parametrizations.orthogonal(nn.Linear(in_dim, out_dim, bias=False))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))
    raise ValueError(f"Unknown projector {kind!r}: expected one of {PROJECTORS}.")


def projector_weight(projector: nn.Module) -> torch.Tensor:
    """The (out_dim, in_dim) matrix of a linear/orthogonal projector, or the last layer of an MLP one."""
    linears = [m for m in projector.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"{type(projector).__name__} holds no nn.Linear: cannot read a projector weight from it.")
    return linears[-1].weight


class BatchFeatureNorm(nn.Module):
    """Batch normalisation without affine parameters that ALWAYS normalises with the current batch statistics.

    SRD normalises both projected student and teacher features this way (``BatchNorm1d(d, affine=False,
    eps=1e-4)`` kept in train mode). Running statistics are still tracked while training, for diagnostics and
    so that checkpoints carry the normaliser state, but they are never used to normalise.

    ``sync=True`` takes the statistics over the global batch of all processes (differentiable all-reduces,
    ``distributed.global_batch_moments``) instead of the local shard: identical to one process seeing the
    whole batch, at the cost of two small all-reduces per call.
    """

    def __init__(self, num_features: int, eps: float = 1e-4, momentum: float = 0.1, sync: bool = False) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum, self.sync = num_features, eps, momentum, sync
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchFeatureNorm expects (batch, {self.num_features}) features, got {tuple(x.shape)}."
            )
        if x.shape[0] < 2:
            raise ValueError(
                f"Batch-norm feature normalisation needs at least 2 samples per device, got a batch of "
                f"{x.shape[0]}: its statistics are undefined. Raise per_device_train_batch_size, drop the "
                "last incomplete batch (dataloader_drop_last=True), or use feature_norm='layernorm'."
            )
        if self.training:
            self.num_batches_tracked.add_(1)
        if self.sync and world_size() > 1:
            return self._global_batch_norm(x)
        return F.batch_norm(
            x,
            self.running_mean if self.training else None,
            self.running_var if self.training else None,
            training=True,
            momentum=self.momentum,
            eps=self.eps,
        )

    def _global_batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        mean, var, n = global_batch_moments(x)
        if self.training:  # same running-statistics update as F.batch_norm: unbiased variance
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                unbiased = var.detach() * (n / max(n - 1, 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        return (x - mean) * torch.rsqrt(var + self.eps)

    def extra_repr(self) -> str:
        scope = "global batch" if self.sync else "batch"
        return f"{self.num_features}, eps={self.eps}, affine=False, {scope} statistics always"


class LayerFeatureNorm(nn.Module):
    """Per-sample layer normalisation without affine parameters (VkD normalises the teacher this way)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.num_features,), eps=self.eps)


class L2FeatureNorm(nn.Module):
    """Projects each feature vector onto the unit sphere (the paper's "L2" normalisation ablation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


def build_feature_norm(kind: str, num_features: int, sync: bool = False) -> nn.Module:
    """A normaliser for (B, num_features) features: ``batchnorm`` (SRD), ``layernorm``, ``l2`` or ``none``.

    ``sync`` (batchnorm only; the others are per sample) uses global-batch statistics across processes.
    """
    if kind == "batchnorm":
        return BatchFeatureNorm(num_features, sync=sync)
    if kind == "layernorm":
        return LayerFeatureNorm(num_features)
    if kind == "l2":
        return L2FeatureNorm()
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown feature norm {kind!r}: expected one of {FEATURE_NORMS}.")
