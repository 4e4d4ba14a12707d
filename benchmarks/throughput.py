"""Training throughput of SRD distillation against its floor and against a peer library, in one run.

For each teacher/student pair and the same fixed batch, one optimisation step of:
  (a) ``plain``:       a transformers ``Trainer`` step of the student with cross-entropy only;
  (b) ``teacher``:     a teacher forward alone (no autograd, same autocast);
  (c) ``srd``:         a ``DistillationTrainer`` SRD step (CE + KL + LogSum on the projected, batch-normed features);
  (c0) ``kd``:         a ``DistillationTrainer`` step without the feature term (teacher + KL only), to split (c);
  (d) ``torchdistill``: the same SRD step built from torchdistill's ``SRDModelWrapper``, ``SRDLoss`` and
      ``ForwardHookManager`` (only when torchdistill is importable: it is a peer, never a dependency).
A Trainer step is ``trainer.training_step`` (forward, loss, backward) + ``optimizer.step`` + ``zero_grad`` after a
one-step ``trainer.train()`` that builds the optimizer and prepares the model: the same code path for (a), (c)
and (c0), without data loading. The variants are timed interleaved (round robin, ``--steps`` steps per turn,
``--repeats`` turns) and the median step time is reported, so that load from other processes hits all of them.

Peak memory: on CUDA ``max_memory_allocated`` over each variant's steps; on CPU the peak of the tensor memory
allocated during one step, from the torch profiler's allocation records (``cpu_step_peak_memory``).

Usage (the committed results):
    python benchmarks/throughput.py --device cpu --out benchmarks/results/throughput_cpu.md
    python benchmarks/throughput.py --device cuda --bf16 --channels-last --compile --out .../throughput_gpu.md
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


@dataclass
class Settings:
    device: str
    batch_size: int
    bf16: bool
    channels_last: bool
    compile: bool
    lr: float = 0.01
    extras: dict = field(default_factory=dict)


def build_pair(name: str) -> Pair:
    """Teacher/student pairs at 32x32. Weights do not change the speed; the CIFAR-10 ResNet56 is used if present."""
    torch.manual_seed(0)
    if name == "resnet":
        teacher = load_cifar10_resnet(RESNET56) if RESNET56.exists() else create_cifar_model("resnet56", 10)
        student = create_cifar_model("resnet20", 10)
        source = "CIFAR-10 weights" if RESNET56.exists() else "random init"
        return Pair(name, teacher, student, 10, f"ResNet56 ({source}) -> ResNet20, CIFAR nets (transformers models)")
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
    raise ValueError(f"Unknown pair {name!r}: expected 'resnet' or 'vit'.")


def make_batch(settings: Settings, num_classes: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(settings.batch_size, 3, 32, 32, generator=g)
    labels = torch.randint(0, num_classes, (settings.batch_size,), generator=g)
    return {"pixel_values": pixel_values.to(settings.device), "labels": labels.to(settings.device)}


def _common_args(settings: Settings, output_dir: str) -> dict:
    return dict(
        output_dir=output_dir, report_to="none", save_strategy="no", disable_tqdm=True, max_steps=1,
        per_device_train_batch_size=settings.batch_size, optim="sgd", learning_rate=settings.lr,
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
    args = TrainingArguments(**_common_args(settings, f"{tmp}/plain"), remove_unused_columns=False)
    return _trainer_step(Trainer(model=student, args=args, train_dataset=_setup_dataset(batch)), batch)


def srd_step(pair: Pair, settings: Settings, batch: dict, tmp: str, feature: bool = True) -> Callable[[], None]:
    student = copy.deepcopy(pair.student)
    if settings.channels_last:
        student = student.to(memory_format=torch.channels_last)
    args = DistillationArguments(
        **_common_args(settings, f"{tmp}/srd{int(feature)}"), feature_loss_weight=2.0 if feature else 0.0,
        teacher_channels_last=settings.channels_last, teacher_compile=settings.compile,
    )
    trainer = DistillationTrainer(
        student, copy.deepcopy(pair.teacher), args, input_size=(3, 32, 32), train_dataset=_setup_dataset(batch)
    )
    return _trainer_step(trainer, batch)


def teacher_step(pair: Pair, settings: Settings, batch: dict, tmp: str) -> Callable[[], None]:
    teacher = copy.deepcopy(pair.teacher).to(settings.device).eval().requires_grad_(False)
    pixel_values = batch["pixel_values"]
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


def torchdistill_step(pair: Pair, settings: Settings, batch: dict, tmp: str) -> Callable[[], None] | None:
    """SRD from torchdistill's parts, wired as its DistillationBox does (frozen teacher under no_grad)."""
    try:
        from torchdistill.core.forward_hook import ForwardHookManager
        from torchdistill.losses.mid_level import SRDLoss
        from torchdistill.models.wrapper import SRDModelWrapper
    except ImportError:
        return None
    if pair.name != "resnet":
        return None  # SRDModelWrapper averages the last two dims of a 4-d feature map: CNN features only
    device = torch.device(settings.device)
    feature_path = "model.model.body.layer3"  # wrapper.model (_LogitsOnly) .model (CIFAR net): (B, 64, 8, 8)
    logits_path = "model.model.classifier"
    teacher = SRDModelWrapper(
        {"path": feature_path, "io": "output"}, {"num_features": 64, "eps": 1e-4, "affine": False}, device, None,
        False, teacher_model=_LogitsOnly(copy.deepcopy(pair.teacher)),
    ).to(device).eval().requires_grad_(False)
    student = SRDModelWrapper(
        {"path": feature_path, "io": "output"}, {"num_features": 64, "eps": 1e-4, "affine": False}, device, None,
        False, linear_kwargs={"in_features": 64, "out_features": 64}, student_model=_LogitsOnly(
            copy.deepcopy(pair.student)),
    ).to(device).train()
    if settings.channels_last:
        teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    hooks_t, hooks_s = ForwardHookManager(device), ForwardHookManager(device)
    for hooks, model in ((hooks_t, teacher), (hooks_s, student)):
        hooks.add_hook(model, feature_path, requires_input=False, requires_output=True)
        hooks.add_hook(model, "norm_layer", requires_input=False, requires_output=True)
        hooks.add_hook(model, logits_path, requires_input=False, requires_output=True)
    criterion = SRDLoss("norm_layer", "output", "norm_layer", "output", logits_path, "output", logits_path,
                        "output", exponent=4.0, temperature=1.0, reduction="batchmean")
    optimizer = torch.optim.SGD(student.parameters(), lr=settings.lr)
    dtype = torch.bfloat16 if settings.bf16 else torch.float32
    pixel_values, labels = batch["pixel_values"], batch["labels"]

    def step() -> None:
        with torch.autocast(settings.device, dtype=dtype, enabled=settings.bf16):
            with torch.no_grad():
                teacher(pixel_values)
                teacher_io = hooks_t.pop_io_dict()
                teacher.secondary_forward(teacher_io)
                _merge(teacher_io, hooks_t.pop_io_dict())
            logits = student(pixel_values)
            student_io = hooks_s.pop_io_dict()
            student.secondary_forward(student_io)
            _merge(student_io, hooks_s.pop_io_dict())
            loss = F.cross_entropy(logits.float(), labels) + criterion(student_io, teacher_io)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _merge(io_dict: dict, more: dict) -> None:
    """Adds the hooks that fired in the secondary forward (the norm layers); the others come back empty."""
    io_dict.update({path: value for path, value in more.items() if value})


BUILDERS = {"plain": plain_step, "teacher": teacher_step, "srd": srd_step, "torchdistill": torchdistill_step}


def build_steps(pair: Pair, settings: Settings, tmp: str, only: str | None = None) -> dict[str, Callable[[], None]]:
    batch = make_batch(settings, pair.num_classes)
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
        + (" (python: a venv made with `python -m venv --system-site-packages`, plus `pip install --no-deps "
           "torchdistill`, so that torchdistill never enters hf_projkd's environment)" if torchdistill_version else ""),
        "",
        f"Machine: {machine_description(settings.device)}. Versions: torch {torch.__version__}, transformers "
        f"{transformers.__version__}, timm {timm.__version__}, hf_projkd {hf_projkd.__version__}, torchdistill "
        f"{torchdistill_version or 'not installed (variant d skipped)'}.",
        "",
        f"Batch {settings.batch_size} at 32x32, precision {'bf16 autocast' if settings.bf16 else 'fp32'}"
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
        lines += _pair_section(data["description"], times, peaks, clock, settings, data.get("td_reason", ""))
    return "\n".join(lines) + "\n"


def _pair_section(
    description: str, times: dict[str, dict[str, list[float]]], peaks: dict[str, float], clock: str,
    settings: Settings, td_reason: str,
) -> list[str]:
    """Table of step times and memory, then the ratios against the goals computed on ``clock``."""
    med = {c: {name: statistics.median(values) for name, values in times[c].items()} for c in times}
    lines = ["", f"## {description}", "",
             "| variant | step, CPU time (ms) | step, wall (ms) | images/s (CPU time) | images/s (wall) | "
             "peak memory (MiB) |", "|---|---|---|---|---|---|"]
    for name in VARIANTS:
        if name not in times["wall"]:
            lines.append(f"| {LABELS[name]} | n/a | n/a | n/a | n/a | n/a |")
            continue
        cells = [_summary([v * 1e3 for v in times[c][name]], ".1f") for c in ("cpu", "wall")]
        rates = [f"{settings.batch_size / med[c][name]:.0f}" for c in ("cpu", "wall")]
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
    parser.add_argument("--pairs", nargs="+", default=["resnet", "vit"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bf16", action="store_true")
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
        with tempfile.TemporaryDirectory() as tmp:
            steps = build_steps(pair, settings, tmp)
            times, peaks = time_interleaved(steps, options.device, options.warmup, options.steps, options.repeats)
            if options.device == "cpu":
                peaks = {name: cpu_step_peak_memory(step) for name, step in steps.items()}
        reason = "torchdistill not installed" if torchdistill_version is None else (
            "torchdistill's SRDModelWrapper averages the last two dims of a 4-d CNN feature map, so it does not "
            "apply to (B, D) ViT features")
        results[pair_name] = {"times": times, "peaks": peaks, "description": pair.description, "td_reason": reason}
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
