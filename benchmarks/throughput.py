"""Training throughput of SRD distillation against its floor and against a peer library, in one run.

For each teacher/student pair (CIFAR scale at 32 px, batch 64; ImageNet scale at 224 px, batch 256) and the same
fixed batch, one optimisation step of:
  (a) ``plain``:       a transformers ``Trainer`` step of the student with cross-entropy only;
  (b) ``teacher``:     a teacher forward alone (no autograd, same autocast);
  (c) ``srd``:         a ``DistillationTrainer`` SRD step (CE + KL + LogSum on the projected, batch-normed features);
  (c0) ``kd``:         a ``DistillationTrainer`` step without the feature term (teacher + KL only), to split (c);
  (d) ``torchdistill``: the same SRD step built from torchdistill's ``SRDModelWrapper``, ``SRDLoss`` and
      ``ForwardHookManager``, wired exactly as its ``DistillationBox`` runs them (the teacher wrapper left in train
      mode, frozen, under no_grad: ``torchdistill_pipeline_loss`` checks the first loss against a real
      ``DistillationBox``); only when torchdistill is importable: it is a peer, never a dependency.
A Trainer step is ``trainer.training_step`` (forward, loss, backward) + ``optimizer.step`` + ``zero_grad`` after a
one-step ``trainer.train()`` that builds the optimizer and prepares the model: the same code path for (a), (c)
and (c0), without data loading. The variants are timed interleaved (round robin, ``--steps`` steps per turn,
``--repeats`` turns) and the median step time is reported, so that load from other processes hits all of them.

Peak memory: on CUDA ``max_memory_allocated`` over each variant's steps; on CPU the peak of the tensor memory
allocated during one step, from the torch profiler's allocation records (``cpu_step_peak_memory``).

Usage (the committed results; benchmarks/gpu_suite.sh runs the GPU ones):
    python benchmarks/throughput.py --device cpu --threads 1 --out benchmarks/results/throughput_cpu.md
    python benchmarks/throughput.py --device cuda --pairs resnet34_18 regnety160_deit_tiny --bf16 --channels-last \
        --teacher-bf16 --out benchmarks/results/throughput_gpu_imagenet.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch import nn  # noqa: E402
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification  # noqa: E402

import hf_projkd  # noqa: E402
from hf_projkd import DistillationArguments, DistillationTrainer  # noqa: E402
from hf_projkd.models import create_cifar_model, load_cifar10_resnet  # noqa: E402

VARIANTS = ("plain", "teacher", "srd", "kd", "torchdistill")
PAIRS = ("resnet", "vit", "resnet34_18", "regnety160_deit_tiny")
SHARED = Path(__file__).resolve().parents[2] / "shared"  # optional: the package never needs it
RESNET56 = SHARED / "weights" / "cifar10-resnet" / "cifar10_resnet56.safetensors"
OVERHEAD_GOAL = 1.05


@dataclass
class Pair:
    name: str
    teacher: nn.Module
    student: nn.Module
    num_classes: int
    description: str
    image_size: int = 32
    batch_size: int = 64
    torchdistill: dict | None = None  # feature module path and dims for torchdistill's SRDModelWrapper, or None


@dataclass
class Settings:
    device: str
    batch_size: int | None
    bf16: bool
    channels_last: bool
    compile: bool
    teacher_bf16: bool = False
    lr: float = 0.01
    extras: dict = field(default_factory=dict)


def build_pair(name: str) -> Pair:
    """The teacher/student pairs. Weights do not change the speed (the CIFAR-10 ResNet56 is used where present)."""
    torch.manual_seed(0)
    if name == "resnet":
        teacher = load_cifar10_resnet(RESNET56) if RESNET56.exists() else create_cifar_model("resnet56", 10)
        student = create_cifar_model("resnet20", 10)
        source = "CIFAR-10 weights" if RESNET56.exists() else "random init"
        return Pair(name, teacher, student, 10, f"ResNet56 ({source}) -> ResNet20, CIFAR nets (transformers models)",
                    torchdistill={"path": "model.model.body.layer3", "teacher_dim": 64, "student_dim": 64,
                                  "logits": "model.model.classifier"})
    if name == "resnet34_18":
        teacher = timm.create_model("resnet34", num_classes=1000)
        student = timm.create_model("resnet18", num_classes=1000)
        return Pair(name, teacher, student, 1000, "ResNet34 -> ResNet18 (timm), 224 px", image_size=224,
                    batch_size=256,
                    torchdistill={"path": "model.model.layer4", "teacher_dim": 512, "student_dim": 512,
                                  "logits": "model.model.fc"})
    if name == "regnety160_deit_tiny":
        from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

        student = DeiTForImageClassificationWithTeacher(DeiTConfig(
            image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
            intermediate_size=768, num_labels=1000, layer_norm_eps=1e-6))
        return Pair(name, timm.create_model("regnety_160", num_classes=1000), student, 1000,
                    "RegNetY-160 (timm) -> DeiT-Ti (transformers, distillation token), 224 px", image_size=224,
                    batch_size=256)
    if name == "vit":
        teacher = timm.create_model(
            "vit_small_patch16_224", num_classes=10, img_size=32, patch_size=4, depth=4, embed_dim=256,
            num_heads=4, pretrained=False,
        )
        student = ViTForImageClassification(ViTConfig(
            image_size=32, patch_size=4, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            intermediate_size=512, num_labels=10,
        ))
        return Pair(name, teacher, student, 10, "timm ViT (4x256, patch 4) -> transformers ViT (4x128, patch 4)")
    raise ValueError(f"Unknown pair {name!r}: expected one of {PAIRS}.")


def make_batch(pair: Pair, settings: Settings) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = settings.batch_size or pair.batch_size
    pixel_values = torch.randn(size, 3, pair.image_size, pair.image_size, generator=g)
    labels = torch.randint(0, pair.num_classes, (size,), generator=g)
    return {"pixel_values": pixel_values.to(settings.device), "labels": labels.to(settings.device)}


def _common_args(settings: Settings, output_dir: str, batch: dict) -> dict:
    return dict(
        output_dir=output_dir, report_to="none", save_strategy="no", disable_tqdm=True, max_steps=1,
        per_device_train_batch_size=len(batch["labels"]), optim="sgd", learning_rate=settings.lr,
        lr_scheduler_type="constant", use_cpu=settings.device == "cpu", bf16=settings.bf16,
        torch_compile=settings.compile, dataloader_num_workers=0, logging_steps=10**6,
    )


def _setup_dataset(batch: dict[str, torch.Tensor]) -> Dataset:
    return Dataset.from_dict({k: v.cpu().numpy() for k, v in batch.items()}).with_format("torch")


def _trainer_step(trainer: Trainer, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One optimisation step through the Trainer's own training_step, after a 1-step train() set everything up."""
    trainer.train()
    model = trainer.model_wrapped

    def step() -> None:
        trainer.training_step(model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return step


def plain_step(pair: Pair, settings: Settings, batch: dict, tmp: str) -> Callable[[], None]:
    student = copy.deepcopy(pair.student)
    if settings.channels_last:
        student = student.to(memory_format=torch.channels_last)
    args = TrainingArguments(**_common_args(settings, f"{tmp}/plain", batch), remove_unused_columns=False)
    return _trainer_step(Trainer(model=student, args=args, train_dataset=_setup_dataset(batch)), batch)


def srd_step(pair: Pair, settings: Settings, batch: dict, tmp: str, feature: bool = True) -> Callable[[], None]:
    student = copy.deepcopy(pair.student)
    if settings.channels_last:
        student = student.to(memory_format=torch.channels_last)
    args = DistillationArguments(
        **_common_args(settings, f"{tmp}/srd{int(feature)}", batch), feature_loss_weight=2.0 if feature else 0.0,
        teacher_channels_last=settings.channels_last, teacher_compile=settings.compile, teacher_check="off",
        teacher_dtype="bfloat16" if settings.teacher_bf16 else "auto", eval_teacher_metrics=False,
    )
    size = (3, pair.image_size, pair.image_size)
    trainer = DistillationTrainer(
        student, copy.deepcopy(pair.teacher), args, input_size=size, train_dataset=_setup_dataset(batch)
    )
    return _trainer_step(trainer, batch)


def teacher_step(pair: Pair, settings: Settings, batch: dict, tmp: str) -> Callable[[], None]:
    teacher = copy.deepcopy(pair.teacher).to(settings.device).eval().requires_grad_(False)
    if settings.teacher_bf16:
        teacher = teacher.to(torch.bfloat16)
    pixel_values = batch["pixel_values"].to(torch.bfloat16) if settings.teacher_bf16 else batch["pixel_values"]
    if settings.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(teacher) if settings.compile else teacher
    dtype = torch.bfloat16 if settings.bf16 else torch.float32

    def step() -> None:
        with torch.no_grad(), torch.autocast(settings.device, dtype=dtype, enabled=settings.bf16):
            forward(pixel_values)

    return step


class _LogitsOnly(nn.Module):
    """transformers classifiers return ModelOutputs; torchdistill's losses read plain logits tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values)
        return out.logits if hasattr(out, "logits") else out


@dataclass
class TorchdistillSRD:
    """SRD from torchdistill's parts: what one step of its ``DistillationBox`` runs."""

    teacher: nn.Module
    student: nn.Module
    hooks_teacher: Any
    hooks_student: Any
    criterion: nn.Module
    settings: Settings

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        dtype = torch.bfloat16 if self.settings.bf16 else torch.float32
        with torch.autocast(self.settings.device, dtype=dtype, enabled=self.settings.bf16):
            with torch.no_grad():
                self.teacher(batch["pixel_values"])
                teacher_io = self.hooks_teacher.pop_io_dict()
                self.teacher.secondary_forward(teacher_io)
                _merge(teacher_io, self.hooks_teacher.pop_io_dict())
            logits = self.student(batch["pixel_values"])
            student_io = self.hooks_student.pop_io_dict()
            self.student.secondary_forward(student_io)
            _merge(student_io, self.hooks_student.pop_io_dict())
            return F.cross_entropy(logits.float(), batch["labels"]) + self.criterion(student_io, teacher_io)


def torchdistill_parts(pair: Pair, settings: Settings) -> TorchdistillSRD | None:
    """SRD wired as torchdistill's ``DistillationBox`` does: frozen teacher under no_grad, its wrapper left in train
    mode (torchdistill never calls ``.eval()`` on it: its normaliser uses batch statistics, like the student's)."""
    try:
        from torchdistill.core.forward_hook import ForwardHookManager
        from torchdistill.losses.mid_level import SRDLoss
        from torchdistill.models.wrapper import SRDModelWrapper
    except ImportError:
        return None
    if pair.torchdistill is None:
        return None  # SRDModelWrapper averages the last two dims of a 4-d feature map: CNN features only
    spec, device = pair.torchdistill, torch.device(settings.device)
    norm = {"num_features": spec["teacher_dim"], "eps": 1e-4, "affine": False}
    teacher = SRDModelWrapper({"path": spec["path"], "io": "output"}, norm, device, None, False,
                              teacher_model=_LogitsOnly(copy.deepcopy(pair.teacher))).to(device).requires_grad_(False)
    torch.manual_seed(1)  # the projector's init
    student = SRDModelWrapper(
        {"path": spec["path"], "io": "output"}, norm, device, None, False,
        linear_kwargs={"in_features": spec["student_dim"], "out_features": spec["teacher_dim"]},
        student_model=_LogitsOnly(copy.deepcopy(pair.student)),
    ).to(device).train()
    if settings.channels_last:
        teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    hooks_t, hooks_s = ForwardHookManager(device), ForwardHookManager(device)
    for hooks, model in ((hooks_t, teacher), (hooks_s, student)):
        hooks.add_hook(model, spec["path"], requires_input=False, requires_output=True)
        hooks.add_hook(model, "norm_layer", requires_input=False, requires_output=True)
        hooks.add_hook(model, spec["logits"], requires_input=False, requires_output=True)
    criterion = SRDLoss("norm_layer", "output", "norm_layer", "output", spec["logits"], "output", spec["logits"],
                        "output", exponent=4.0, temperature=1.0, reduction="batchmean")
    return TorchdistillSRD(teacher, student, hooks_t, hooks_s, criterion, settings)


def torchdistill_pipeline_loss(pair: Pair, parts: TorchdistillSRD, batch: dict[str, torch.Tensor]) -> float:
    """The first step's loss computed by torchdistill's own ``DistillationBox`` (configured as its SRD configs do),
    from the same weights and projector as ``parts``: the reference that variant (d) must equal."""
    import torchdistill.core.interfaces.forward_proc  # noqa: F401 - registers the forward functions
    from torchdistill.core.distillation import DistillationBox

    spec = pair.torchdistill
    norm = {"num_features": spec["teacher_dim"], "eps": 1e-4, "affine": False}

    def side(teacher: bool) -> dict:
        wrapper = {"input_module": {"path": spec["path"], "io": "output"}, "norm_kwargs": norm}
        if not teacher:
            wrapper["linear_kwargs"] = {"in_features": spec["student_dim"], "out_features": spec["teacher_dim"]}
        return {"auxiliary_model_wrapper": {"key": "SRDModelWrapper", "kwargs": wrapper},
                "forward_proc": "forward_batch_only",
                "forward_hook": {"input": [], "output": [spec["path"], "norm_layer"]}, "requires_grad": not teacher}

    ce = {"criterion": {"key": "CrossEntropyLoss", "kwargs": {"reduction": "mean"}},
          "criterion_wrapper": {"key": "SimpleLossWrapper", "kwargs": {
              "input": {"is_from_teacher": False, "module_path": ".", "io": "output"}, "target": {"uses_label": True}}},
          "weight": 1.0}
    srd = {"criterion": {"key": "SRDLoss", "kwargs": {
        "student_feature_module_path": "norm_layer", "student_feature_module_io": "output",
        "teacher_feature_module_path": "norm_layer", "teacher_feature_module_io": "output",
        "student_linear_module_path": ".", "student_linear_module_io": "output",
        "teacher_linear_module_path": ".", "teacher_linear_module_io": "output",
        "exponent": 4.0, "temperature": 1.0, "reduction": "batchmean"}}, "weight": 1.0}
    train_config = {"teacher": side(True), "student": side(False),
                    "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"ce": ce, "srd": srd}}},
                    "optimizer": {"key": "SGD", "kwargs": {"lr": 0.01}}, "num_epochs": 1}
    device = torch.device(parts.settings.device)
    box = DistillationBox(copy.deepcopy(parts.teacher.model), copy.deepcopy(parts.student.model), {}, train_config,
                          device, None, False, 1)
    box.student_model.load_state_dict(parts.student.state_dict())
    box.pre_epoch_process(epoch=0)
    return float(box.forward_process(batch["pixel_values"], batch["labels"]).detach())


def torchdistill_step(pair: Pair, settings: Settings, batch: dict, tmp: str) -> Callable[[], None] | None:
    parts = torchdistill_parts(pair, settings)
    if parts is None:
        return None
    optimizer = torch.optim.SGD(parts.student.parameters(), lr=settings.lr)

    def step() -> None:
        parts.loss(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _merge(io_dict: dict, more: dict) -> None:
    """Adds the hooks that fired in the secondary forward (the norm layers); the others come back empty."""
    io_dict.update({path: value for path, value in more.items() if value})


BUILDERS = {"plain": plain_step, "teacher": teacher_step, "srd": srd_step, "torchdistill": torchdistill_step}


def build_steps(pair: Pair, settings: Settings, tmp: str, only: str | None = None) -> dict[str, Callable[[], None]]:
    batch = make_batch(pair, settings)
    steps: dict[str, Callable[[], None]] = {}
    for name in VARIANTS:
        if only is not None and name != only:
            continue
        if name == "kd":
            steps[name] = srd_step(pair, settings, batch, tmp, feature=False)
            continue
        step = BUILDERS[name](pair, settings, batch, tmp)
        if step is not None:
            steps[name] = step
    return steps


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    steps: dict[str, Callable[[], None]], device: str, warmup: int, per_turn: int, repeats: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Round robin over the variants.

    Returns, per clock (``wall``: elapsed time; ``cpu``: this process's CPU time, which time-slicing by other
    processes on a shared machine does not inflate), every timed step in seconds, and the CUDA peak memory (MiB).
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    _sync(device)
    times: dict[str, dict[str, list[float]]] = {"wall": {n: [] for n in steps}, "cpu": {n: [] for n in steps}}
    peaks: dict[str, float] = {name: 0.0 for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            for _ in range(per_turn):
                _sync(device)
                wall, cpu = time.perf_counter(), time.process_time()
                step()
                _sync(device)
                times["wall"][name].append(time.perf_counter() - wall)
                times["cpu"][name].append(time.process_time() - cpu)
            if device == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**20)
    return times, peaks


def cpu_step_peak_memory(step: Callable[[], None]) -> float:
    """Peak (MiB) of the CPU memory allocated during one step, from the torch profiler's allocation records.

    Walks the ops in start order and accumulates what each allocates and frees itself: the high-water mark of
    that running sum is the step's peak live tensor memory (memory held from before the step is not counted).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def machine_description(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"
    if device == "cuda":
        text = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}); host: {text}"
    return text


def report(results: dict, settings: Settings, argv: list[str], torchdistill_version: str | None) -> str:
    lines = [
        f"# Training throughput ({settings.device.upper()})",
        "",
        f"Command: `python benchmarks/throughput.py {' '.join(argv)}`"
        + (f" (torchdistill {torchdistill_version} importable, installed without its dependencies: "
           f"`pip install --no-deps torchdistill=={torchdistill_version}`, as .ci/run does; it is not a dependency of "
           "hf_projkd)" if torchdistill_version else ""),
        "",
        f"Machine: {machine_description(settings.device)}. Versions: torch {torch.__version__}, transformers "
        f"{transformers.__version__}, timm {timm.__version__}, hf_projkd {hf_projkd.__version__}, torchdistill "
        f"{torchdistill_version or 'not installed (variant d skipped)'}.",
        "",
        f"Precision {'bf16 autocast' if settings.bf16 else 'fp32'}"
        f"{', teacher weights in bf16' if settings.teacher_bf16 else ''}"
        f"{', channels_last' if settings.channels_last else ''}{', torch.compile' if settings.compile else ''}. "
        f"Step times: median [IQR] over {settings.extras['repeats']} interleaved turns x "
        f"{settings.extras['steps']} steps per variant, after {settings.extras['warmup']} warm-up steps each.",
    ]
    if settings.device == "cpu":
        lines += ["", "**The machine was shared** with other engineers' jobs during the run (1-minute load average "
                  f"{settings.extras['load']}, on {os.cpu_count()} logical CPUs): wall-clock times are inflated and "
                  "noisy. The variants were interleaved so that the load hits all of them alike, torch ran "
                  f"{torch.get_num_threads()} thread(s), and the goals are judged on the process's CPU "
                  "time, which time-slicing does not inflate (cache and memory-bandwidth contention still can).", "",
                  "Peak memory = peak of the tensor memory allocated during one step (torch "
                  "profiler allocation records; weights and optimizer state held from before the step excluded)."]
    clock = "cpu" if settings.device == "cpu" else "wall"
    for data in results.values():
        times, peaks = data["times"], data["peaks"]
        lines += _pair_section(data, times, peaks, clock, settings, data.get("td_reason", ""))
    return "\n".join(lines) + "\n"


def _pair_section(
    data: dict, times: dict[str, dict[str, list[float]]], peaks: dict[str, float], clock: str,
    settings: Settings, td_reason: str,
) -> list[str]:
    """Table of step times and memory, then the ratios against the goals computed on ``clock``."""
    med = {c: {name: statistics.median(values) for name, values in times[c].items()} for c in times}
    batch = data["batch"]
    lines = ["", f"## {data['description']}", "", f"Batch {batch} at {data['image_size']}x{data['image_size']}"
             + (f"; torchdistill fidelity: {data['fidelity']}." if data.get("fidelity") else "."), "",
             "| variant | step, CPU time (ms) | step, wall (ms) | images/s (CPU time) | images/s (wall) | "
             "peak memory (MiB) |", "|---|---|---|---|---|---|"]
    for name in VARIANTS:
        if name not in times["wall"]:
            lines.append(f"| {LABELS[name]} | n/a | n/a | n/a | n/a | n/a |")
            continue
        cells = [_summary([v * 1e3 for v in times[c][name]], ".1f") for c in ("cpu", "wall")]
        rates = [f"{batch / med[c][name]:.0f}" for c in ("cpu", "wall")]
        lines.append(f"| {LABELS[name]} | {cells[0]} | {cells[1]} | {rates[0]} | {rates[1]} | "
                     f"{peaks.get(name, float('nan')):.1f} |")
    lines += ["", f"Ratios on the {'CPU-time' if clock == 'cpu' else 'wall'} clock, computed per interleaved turn "
              "(each variant's median step in that turn) and given as median [IQR] over the turns: the IQR is the "
              "ratio's noise here. The wall-clock median of each ratio follows in parentheses.", ""]
    turns = {c: _per_turn_medians(times[c], settings.extras["steps"]) for c in times}
    overhead = {c: [t["srd"] / (t["plain"] + t["teacher"]) for t in turns[c]] for c in turns}
    feature = [(t["srd"] - t["kd"]) / t["srd"] * 100 for t in turns[clock]]
    ratio = statistics.median(overhead[clock])
    lines.append(f"- Overhead `c / (a + b)` = **{_summary(overhead[clock])}** (wall: "
                 f"{statistics.median(overhead['wall']):.3f}); goal <= {OVERHEAD_GOAL}: "
                 f"{'met' if ratio <= OVERHEAD_GOAL else 'missed'}.")
    lines.append(f"- Share of the feature term (projector + 2 batch norms + LogSum) in the SRD step, "
                 f"`(c - c0) / c` = {_summary(feature, '.1f')} %.")
    if "torchdistill" in times["wall"]:
        speed = {c: [t["torchdistill"] / t["srd"] for t in turns[c]] for c in turns}
        verdict = "met" if statistics.median(speed[clock]) >= 1 else "missed"
        lines.append(f"- `c` vs `d`: hf_projkd's SRD step runs at **{_summary(speed[clock])}x** torchdistill's "
                     f"speed (wall: {statistics.median(speed['wall']):.3f}x); goal >= 1: {verdict}.")
    else:
        lines.append(f"- `d` (torchdistill): not run for this pair ({td_reason}).")
    return lines


def _per_turn_medians(times: dict[str, list[float]], per_turn: int) -> list[dict[str, float]]:
    count = min(len(values) for values in times.values()) // per_turn
    return [{name: statistics.median(values[t * per_turn:(t + 1) * per_turn]) for name, values in times.items()}
            for t in range(count)]


def _summary(values: list[float], fmt: str = ".3f") -> str:
    q = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):{fmt}} [{q[0]:{fmt}}-{q[2]:{fmt}}]"


LABELS = {
    "plain": "(a) Trainer, student, CE only",
    "teacher": "(b) teacher forward alone",
    "srd": "(c) DistillationTrainer, SRD",
    "kd": "(c0) DistillationTrainer, KD only (no feature term)",
    "torchdistill": "(d) torchdistill SRD",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pairs", nargs="+", default=["resnet", "vit"], choices=PAIRS)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the pair's (64 at 32 px, 256 at 224)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--teacher-bf16", action="store_true", help="the teacher's weights in bf16 (teacher_dtype)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per turn")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved turns")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (CPU); 1 keeps a shared machine's contention from stalling "
                        "OpenMP barriers, which would swamp the differences being measured")
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    settings = Settings(options.device, options.batch_size, options.bf16, options.channels_last, options.compile,
                        options.teacher_bf16,
                        extras={"repeats": options.repeats, "steps": options.steps, "warmup": options.warmup})
    argv = sys.argv[1:]
    try:
        import torchdistill

        torchdistill_version = torchdistill.__version__
    except ImportError:
        torchdistill_version = None
    load_at_start = os.getloadavg()[0]
    results = {}
    for pair_name in options.pairs:
        pair = build_pair(pair_name)
        fidelity = ""
        parts = torchdistill_parts(pair, settings) if torchdistill_version else None
        if parts is not None and not settings.bf16:  # (d) computes what torchdistill's own pipeline computes
            batch = make_batch(pair, settings)
            ours, theirs = float(parts.loss(batch).detach()), torchdistill_pipeline_loss(pair, parts, batch)
            fidelity = f"first-step loss {ours:.4f} here vs {theirs:.4f} through its DistillationBox"
        with tempfile.TemporaryDirectory() as tmp:
            steps = build_steps(pair, settings, tmp)
            times, peaks = time_interleaved(steps, options.device, options.warmup, options.steps, options.repeats)
            if options.device == "cpu":
                peaks = {name: cpu_step_peak_memory(step) for name, step in steps.items()}
        reason = "torchdistill not installed" if torchdistill_version is None else (
            "torchdistill's SRDModelWrapper averages the last two dims of a 4-d CNN feature map, so it does not "
            "apply to (B, D) ViT features")
        results[pair_name] = {"times": times, "peaks": peaks, "description": pair.description, "td_reason": reason,
                              "batch": settings.batch_size or pair.batch_size, "image_size": pair.image_size,
                              "fidelity": fidelity}
        print(f"{pair_name} (CPU time): " + ", ".join(
            f"{k} {statistics.median(v) * 1e3:.1f} ms" for k, v in times["cpu"].items()), flush=True)
    settings.extras["load"] = f"{load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    text = report(results, settings, argv, torchdistill_version)
    print(text)
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(text)
        raw = options.out.with_suffix(".json")
        raw.write_text(json.dumps({k: {"times_s": v["times"], "peaks_mib": v["peaks"]} for k, v in results.items()},
                                  indent=1))


if __name__ == "__main__":
    main()
