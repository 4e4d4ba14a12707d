"""Training speed and peak memory of the DeiT-Ti recipe step, plus parameters / MACs of the recipes' models.

Runs the real recipe code path (``recipes/configs/deit.yaml`` parsed by ``recipes/imagenet.py``,
``DistillationTrainer``, drop path, Mixup/CutMix on the device, AdamW no-decay-on-1-d, bf16 and the bf16 channels_last
teacher on GPU) for
``--warmup + --steps`` steps on random 224 px images (no JPEG decoding: the model step is measured, not the input
pipeline), with a randomly initialised DeiT-Ti student and RegNetY-160 teacher (weights do not change the speed).
Images/s is timed over the ``--steps`` steps after ``--warmup``; peak memory is ``torch.cuda.max_memory_allocated``
(GPU) or the process's peak resident set size (CPU).

    python benchmarks/deit_tiny_recipe_speed.py --device cuda --batch 128 --warmup 20 --steps 300 \\
        --out benchmarks/results/deit_tiny_recipe_speed_gpu.json
    python benchmarks/deit_tiny_recipe_speed.py --device cpu --batch 8 --warmup 2 --steps 3 \\
        --out benchmarks/results/deit_tiny_recipe_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sys  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import cifar  # noqa: E402
import deit_tiny  # noqa: E402
from imagenet import configure_schedule  # noqa: E402
from imagenet import parse as parse_recipe  # noqa: E402

from hf_projkd import DistillationTrainer, create_student  # noqa: E402
from hf_projkd.data.cifar import DecodedImages, DecodedSplits  # noqa: E402
from hf_projkd.data.imagenet import collate_images  # noqa: E402
from hf_projkd.hub import count_macs, count_parameters  # noqa: E402
from hf_projkd.models import CIFAR10_CLASSES, create_cifar_model  # noqa: E402

NUM_CLASSES = 1000
SIZE = 224


class RandomImages(torch.utils.data.Dataset):
    """``length`` samples drawn from a small pool of random images (memory stays small at any length)."""

    def __init__(self, length: int, pool: int = 64) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(pool, 3, SIZE, SIZE, generator=generator)
        self.labels = torch.randint(0, NUM_CLASSES, (length,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index % len(self.images)], "labels": int(self.labels[index])}


class StepTimer(TrainerCallback):
    """Wall time of the optimizer steps after ``warmup`` (CUDA synchronised at both ends)."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device, self.start, self.elapsed = warmup, device, None, None

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.warmup:
            self._sync()
            if self.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()
        elif state.global_step == state.max_steps and self.start is not None:
            self._sync()
            self.elapsed = time.perf_counter() - self.start


def model_costs() -> dict:
    """Parameters and GMACs at 224 px of every recipe model (1000 classes), counted on random-init models."""
    names = [str(i) for i in range(NUM_CLASSES)]
    models = {
        "deit-tiny (DeiTForImageClassificationWithTeacher)": create_student("deit-tiny", names, SIZE),
        "deit-small (DeiTForImageClassificationWithTeacher)": create_student("deit-small", names, SIZE),
        "resnet18 (timm)": timm.create_model("resnet18", num_classes=NUM_CLASSES),
        "resnet34 (timm, teacher)": timm.create_model("resnet34", num_classes=NUM_CLASSES),
        "regnety_160 (timm, teacher)": timm.create_model("regnety_160", num_classes=NUM_CLASSES),
    }
    return {
        name: {"params_M": round(count_parameters(m) / 1e6, 3), "GMACs": round(count_macs(m, (3, SIZE, SIZE)) / 1e9, 3)}
        for name, m in models.items()
    }


def deit_tiny_trainer(cli: argparse.Namespace, output_dir: str, timer: StepTimer) -> DistillationTrainer:
    total = cli.warmup + cli.steps
    argv = ["--output_dir", output_dir, "--max_steps", str(total), "--per_device_train_batch_size", str(cli.batch),
            "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1000000",
            "--dataloader_num_workers", str(cli.workers), "--dataloader_persistent_workers", "false",
            "--disable_tqdm", "true", "--teacher_check", "off", "--eval_teacher_metrics", "false"]
    if cli.device == "cpu":
        argv += ["--use_cpu", "true", "--bf16", "false"]
    argv += _set_flags(cli.set)
    recipe, _, args = parse_recipe("deit.yaml", {**deit_tiny.DEFAULTS, "output_dir": output_dir}, argv)
    dataset = RandomImages(total * cli.batch)
    configure_schedule(args, recipe, len(dataset), streaming=False)
    torch.manual_seed(0)
    student = create_student("deit-tiny", [str(i) for i in range(NUM_CLASSES)], SIZE,
                             drop_path_rate=recipe.drop_path_rate)
    teacher = timm.create_model("regnety_160", num_classes=NUM_CLASSES)
    return DistillationTrainer(student, teacher, args, input_size=(3, SIZE, SIZE), train_dataset=dataset,
                               callbacks=[timer], data_collator=collate_images)


def cifar_trainer(cli: argparse.Namespace, output_dir: str, timer: StepTimer) -> DistillationTrainer:
    """ResNet56 -> ResNet20 with the CRD protocol on decoded random images (content does not change the speed)."""
    total, generator = cli.warmup + cli.steps, torch.Generator().manual_seed(0)
    count = max(total * cli.batch, 1024)
    images = DecodedImages(torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator),
                           torch.randint(0, 10, (count,), generator=generator))
    data = DecodedSplits(images, DecodedImages(images.pixels[:256], images.labels[:256]), list(CIFAR10_CLASSES))
    teacher_dir = Path(output_dir) / "teacher"
    labels = {"id2label": dict(enumerate(CIFAR10_CLASSES)), "label2id": {c: i for i, c in enumerate(CIFAR10_CLASSES)}}
    create_cifar_model("resnet56", num_labels=10, **labels).save_pretrained(teacher_dir)
    argv = ["--method", "srd+kd", "--student", "resnet20", "--teacher", str(teacher_dir), "--output_dir", output_dir,
            "--max_steps", str(total), "--per_device_train_batch_size", str(cli.batch), "--save_strategy", "no",
            "--logging_steps", "1000000", "--disable_tqdm", "true", "--teacher_check", "off",
            "--eval_teacher_metrics", "false", "--dataloader_num_workers", str(cli.workers)]
    if cli.device == "cpu":
        argv += ["--use_cpu", "true"]
    recipe, args = cifar.parse(argv + _set_flags(cli.set))
    trainer = cifar.build_trainer(recipe, args, data)
    trainer.add_callback(timer)
    return trainer


def _set_flags(items: list[str]) -> list[str]:
    return [token for item in items for token in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=("deit_tiny", "cifar"), default="deit_tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="Extra recipe flags, e.g. --set teacher_dtype=auto teacher_channels_last=false.")
    cli = parser.parse_args()

    with tempfile.TemporaryDirectory() as output_dir:
        timer = StepTimer(cli.warmup, cli.device)
        build = deit_tiny_trainer if cli.recipe == "deit_tiny" else cifar_trainer
        trainer = build(cli, output_dir, timer)
        args = trainer.args
        trainer.train()

    if cli.device == "cuda":
        peak_gib, device_name = torch.cuda.max_memory_allocated() / 2**30, torch.cuda.get_device_name()
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        device_name = platform.processor() or platform.machine()
    result = {
        "benchmark": ("DeiT-Ti recipe training step (student fwd/bwd + RegNetY-160 teacher fwd + projector + AdamW)"
                      if cli.recipe == "deit_tiny" else "CIFAR CRD-protocol step, ResNet56 -> ResNet20, data included"),
        "command": "python benchmarks/recipe_speed.py " + " ".join(
            f"--{k} {v}" for k, v in vars(cli).items() if k not in ("out", "set"))
        + (f" --set {' '.join(cli.set)}" if cli.set else "") + f" --out {cli.out}",
        "device": cli.device, "device_name": device_name, "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "bf16": bool(args.bf16), "teacher_dtype": args.teacher_dtype,
        "teacher_channels_last": args.teacher_channels_last, "batch_per_device": cli.batch,
        "timed_steps": cli.steps, "warmup_steps": cli.warmup,
        "images_per_second": round(cli.steps * cli.batch / timer.elapsed, 2),
        "seconds_per_step": round(timer.elapsed / cli.steps, 4),
        "peak_memory_GiB": round(peak_gib, 3),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if cli.device == "cuda" else "process peak RSS",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "timm": timm.__version__},
    }
    if cli.recipe == "deit_tiny":
        result["model_costs_224px"] = model_costs()
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    cli.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
