"""Training speed and peak memory of the DeiT-Ti recipe step, plus parameters / MACs of the recipes' models.

Runs the real recipe code path (``recipes/deit_tiny.py`` defaults parsed by ``hf_projkd.recipes_imagenet``,
``RecipeTrainer``, drop path, Mixup/CutMix collator, AdamW no-decay-on-1-d, bf16 on GPU) for
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

import timm  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_projkd.data.mixup import MixupCollator  # noqa: E402
from hf_projkd.hub import count_macs, count_parameters  # noqa: E402
from hf_projkd.recipes_imagenet import (  # noqa: E402
    RecipeTrainer,
    build_student,
    configure_schedule,
    deit_defaults,
    parse_args,
)

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
        "deit-tiny (DeiTForImageClassificationWithTeacher)": build_student("deit-tiny", names, SIZE),
        "deit-small (DeiTForImageClassificationWithTeacher)": build_student("deit-small", names, SIZE),
        "resnet18 (timm)": timm.create_model("resnet18", num_classes=NUM_CLASSES),
        "resnet34 (timm, teacher)": timm.create_model("resnet34", num_classes=NUM_CLASSES),
        "regnety_160 (timm, teacher)": timm.create_model("regnety_160", num_classes=NUM_CLASSES),
    }
    return {
        name: {"params_M": round(count_parameters(m) / 1e6, 3), "GMACs": round(count_macs(m, (3, SIZE, SIZE)) / 1e9, 3)}
        for name, m in models.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    cli = parser.parse_args()

    with tempfile.TemporaryDirectory() as output_dir:
        total = cli.warmup + cli.steps
        argv = ["--output_dir", output_dir, "--max_steps", str(total), "--per_device_train_batch_size", str(cli.batch),
                "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1000000",
                "--dataloader_num_workers", str(cli.workers), "--dataloader_persistent_workers", "false",
                "--disable_tqdm", "true"]
        if cli.device == "cpu":
            argv += ["--use_cpu", "--bf16", "false"]
        recipe, _, args = parse_args(deit_defaults("deit-tiny", output_dir), argv)
        dataset = RandomImages(total * cli.batch)
        configure_schedule(args, recipe, len(dataset), streaming=False)
        torch.manual_seed(0)
        student = build_student("deit-tiny", [str(i) for i in range(NUM_CLASSES)], SIZE, recipe.drop_path_rate)
        teacher = timm.create_model("regnety_160", num_classes=NUM_CLASSES)
        timer = StepTimer(cli.warmup, cli.device)
        trainer = RecipeTrainer(
            student, teacher, args, input_size=(3, SIZE, SIZE), train_dataset=dataset, callbacks=[timer],
            data_collator=MixupCollator(NUM_CLASSES, label_smoothing=args.label_smoothing_factor),
        )
        trainer.train()

    if cli.device == "cuda":
        peak_gib, device_name = torch.cuda.max_memory_allocated() / 2**30, torch.cuda.get_device_name()
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        device_name = platform.processor() or platform.machine()
    result = {
        "benchmark": "DeiT-Ti recipe training step (student fwd/bwd + RegNetY-160 teacher fwd + projector + AdamW)",
        "command": "python benchmarks/deit_tiny_recipe_speed.py " + " ".join(
            f"--{k} {v}" for k, v in vars(cli).items() if k != "out") + f" --out {cli.out}",
        "device": cli.device, "device_name": device_name, "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "bf16": bool(args.bf16), "batch_per_device": cli.batch, "timed_steps": cli.steps, "warmup_steps": cli.warmup,
        "images_per_second": round(cli.steps * cli.batch / timer.elapsed, 2),
        "seconds_per_step": round(timer.elapsed / cli.steps, 4),
        "peak_memory_GiB": round(peak_gib, 3),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if cli.device == "cuda" else "process peak RSS",
        "model_costs_224px": model_costs(),
    }
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    cli.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
