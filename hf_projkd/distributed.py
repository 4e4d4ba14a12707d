"""Multi-process and speed helpers: global-batch feature-norm statistics and teacher preparation.

Two concerns that only show up past one process or one precision:

- The SRD feature loss normalises both sides with batch statistics. Under data parallelism each process sees
  only its shard, so by default (as in the official code) the statistics are per device. ``global_batch_moments``
  computes them over the global batch instead, with all-reduces that carry gradients (like ``SyncBatchNorm``).
- The teacher runs on every step without autograd. Under DDP/FSDP it is replicated and only placed on the device
  (``accelerator.prepare_model(teacher, evaluation_mode=True)``); under DeepSpeed ZeRO-3 it is sharded by a
  DeepSpeed inference engine; under ZeRO-1/2 it is cast to the training precision, as DeepSpeed does not autocast.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

TEACHER_STRATEGIES = ("single", "ddp", "fsdp", "deepspeed", "deepspeed_zero3")


def world_size() -> int:
    """Number of processes in the default group; 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes whose backward is again a sum over processes.

    Each process ``r`` has its own loss ``L_r``; DDP then averages the parameter gradients. The gradient of
    ``sum_r L_r`` w.r.t. this process's contribution to a global sum is the sum over processes of the gradients
    w.r.t. that global sum, hence the all-reduce in the backward too.
    """
    return tensor if world_size() == 1 else _AllReduceSum.apply(tensor)


class _AllReduceSum(torch.autograd.Function):
    """``dist.all_reduce(SUM)`` as an autograd op: the backward all-reduces the incoming gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        reduced = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def global_batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-dimension mean and biased variance of (B, D) ``x`` over the batches of ALL processes, differentiable.

    Two passes (mean first, then the centred sum of squares) rather than ``E[x^2] - E[x]^2``, which cancels
    catastrophically for features far from zero. Processes may hold different batch sizes. Returns
    ``(mean, var, global_count)``.
    """
    count = torch.tensor([float(x.shape[0])], device=x.device)
    if world_size() > 1:
        dist.all_reduce(count)
    n = int(count.item())
    mean = all_reduce_sum_with_grad(x.sum(dim=0)) / n
    var = all_reduce_sum_with_grad((x - mean).pow(2).sum(dim=0)) / n
    return mean, var, n


# -- teacher preparation -------------------------------------------------------------------------------------
def teacher_strategy(accelerator: Any) -> str:
    """How the teacher is prepared for this accelerator: one of ``TEACHER_STRATEGIES``.

    Read from ``accelerator.distributed_type`` and, for DeepSpeed, the ZeRO stage of its plugin config.
    """
    kind = str(getattr(getattr(accelerator, "distributed_type", None), "value", "NO"))
    if kind == "DEEPSPEED":
        plugin = accelerator.state.deepspeed_plugin
        stage = plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
        return "deepspeed_zero3" if int(stage) == 3 else "deepspeed"
    if kind == "FSDP":
        return "fsdp"
    if kind.startswith("MULTI_"):
        return "ddp"
    return "single"


def prepare_teacher(accelerator: Any, teacher: nn.Module) -> nn.Module:
    """The frozen eval-mode teacher, placed the way the accelerator's setup needs; returns the module to run.

    - single / DDP / FSDP: ``accelerator.prepare_model(teacher, evaluation_mode=True)``: device placement only
      (no DDP wrapper: it has nothing to all-reduce; under FSDP the teacher is replicated, not sharded).
    - DeepSpeed ZeRO-1/2: placed and cast to the bf16/fp16 training dtype (DeepSpeed trains in that dtype and
      does not autocast, so an fp32 teacher would meet half-precision inputs).
    - DeepSpeed ZeRO-3: a DeepSpeed engine without optimizer shards the teacher's parameters across processes;
      its modules gather them on use, so the returned module (``engine.module``) is called as usual.
    """
    teacher = teacher.eval().requires_grad_(False)
    strategy = teacher_strategy(accelerator)
    if strategy in ("single", "ddp", "fsdp"):
        # moves the module in place (and patches its forward with the autocast); the possibly compiled wrapper
        # it returns is dropped: the teacher's compilation is teacher_compile's job, and users keep their module
        accelerator.prepare_model(teacher, evaluation_mode=True)
        return teacher
    teacher = teacher.to(accelerator.device)
    dtype = _deepspeed_dtype(accelerator.state.deepspeed_plugin.deepspeed_config, accelerator.mixed_precision)
    if strategy == "deepspeed":
        return teacher.to(dtype) if dtype is not None else teacher
    return _deepspeed_zero3_engine(teacher, accelerator.state.deepspeed_plugin.deepspeed_config).module.eval()


def deepspeed_teacher_config(train_config: dict[str, Any]) -> dict[str, Any]:
    """The training DeepSpeed config minus what an inference-only ZeRO-3 engine must not have.

    Keeps the ZeRO-3 sharding and the precision; drops optimizer/scheduler sections, resolves the batch size
    fields and drops any other "auto" value (those fail outside the Trainer's own DeepSpeed initialisation).
    """
    config = copy.deepcopy(train_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = 3
    for key in ("offload_optimizer",):
        zero.pop(key, None)
    config["train_micro_batch_size_per_gpu"] = _int_or(config.get("train_micro_batch_size_per_gpu"), 1)
    config.pop("train_batch_size", None)
    config["gradient_accumulation_steps"] = _int_or(config.get("gradient_accumulation_steps"), 1)
    for section in (config, zero):  # other unresolved "auto" values: let DeepSpeed use its defaults
        for key in [k for k, v in section.items() if v == "auto"]:
            del section[key]
    return config


def _deepspeed_zero3_engine(teacher: nn.Module, train_config: dict[str, Any]) -> Any:
    try:
        import deepspeed
    except ImportError as error:
        raise ImportError(
            "The accelerate config asks for DeepSpeed ZeRO-3, which shards the teacher with a DeepSpeed engine, "
            "but deepspeed is not installed. Install it (pip install deepspeed) or use ZeRO-2 / DDP / FSDP."
        ) from error
    engine, *_ = deepspeed.initialize(model=teacher, config=deepspeed_teacher_config(train_config))
    return engine


def _deepspeed_dtype(config: dict[str, Any], mixed_precision: str | None) -> torch.dtype | None:
    """The dtype DeepSpeed trains in: its config's bf16/fp16 sections, else ("auto") the launch's precision."""
    if _enabled(config.get("bf16")):
        return torch.bfloat16
    if _enabled(config.get("fp16")):
        return torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(mixed_precision))


def _enabled(section: Any) -> bool:
    return isinstance(section, dict) and section.get("enabled") in (True, "true", "True")


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) else default


# -- teacher speed -------------------------------------------------------------------------------------------
def optimize_teacher_call(
    teacher: nn.Module,
    call: Callable[[torch.Tensor], Any],
    channels_last: bool = False,
    compile: bool = False,
    backend: str | None = None,
    mode: str | None = None,
) -> Callable[[torch.Tensor], Any]:
    """The teacher's feature forward, optionally in channels_last memory format and/or ``torch.compile``-d.

    Both only change how the same computation is laid out or fused, so features stay equal up to float
    reordering. The compiled function is traced without autograd (the trainer calls it under ``no_grad``).
    ``backend`` / ``mode`` default to torch's (inductor); the trainer passes ``torch_compile_backend/mode``.
    """
    if channels_last:
        teacher.to(memory_format=torch.channels_last)
    fn = torch.compile(call, dynamic=False, backend=backend or "inductor", mode=mode) if compile else call
    if not channels_last:
        return fn

    def channels_last_call(pixel_values: torch.Tensor) -> Any:
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return fn(pixel_values)

    return channels_last_call
