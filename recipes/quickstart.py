"""Offline quickstart: distil a CIFAR ResNet8 from a ResNet20 on scikit-learn's digits and compare methods.

    python recipes/quickstart.py                      # or: accelerate launch recipes/quickstart.py
    python recipes/quickstart.py --student_epochs 40 --logsum_exponent 2 --results_file results.md

Runs anywhere with no network: the data ships with scikit-learn (1,797 8x8 grey digits), the models are hf_projkd's
CIFAR ResNets trained from scratch. It trains the teacher with cross-entropy, then one student per method of
``--methods`` (names of ``hf_projkd.METHOD_PRESETS``), and prints a table of top-1 accuracies. Every
DistillationArguments / TrainingArguments field is a flag (loss fields given here win over the method presets);
``--config FILE.yaml`` sets many at once.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset

from hf_projkd import METHODS, DistillationArguments, DistillationTrainer, method_preset
from hf_projkd.cli import parse_recipe_args
from hf_projkd.config import LOSS_FIELDS
from hf_projkd.models import create_cifar_model


@dataclass
class QuickstartArguments:
    teacher_arch: str = field(default="resnet20", metadata={"help": "CIFAR architecture of the teacher."})
    student_arch: str = field(default="resnet8", metadata={"help": "CIFAR architecture of the student."})
    train_samples: int = field(default=500, metadata={"help": "Training images (the rest of the 1,797 are test)."})
    teacher_epochs: int = field(default=20, metadata={"help": "Epochs of CE training for the teacher."})
    student_epochs: int = field(default=15, metadata={"help": "Epochs for each student."})
    methods: str = field(default="ce,kd,srd+kd", metadata={"help": f"Comma-separated methods, of {METHODS}."})
    image_size: int = field(default=8, metadata={"help": "Digits are 8x8; a larger size upsamples them (bilinear)."})
    results_file: str | None = field(default=None, metadata={"help": "Also write the table (markdown) here."})

    def __post_init__(self) -> None:
        self.method_list = [m.strip() for m in self.methods.split(",") if m.strip()]
        unknown = [m for m in self.method_list if m not in METHODS]
        if unknown or not self.method_list:
            raise ValueError(f"--methods {self.methods!r}: expected comma-separated names of {METHODS}.")
        if not 10 <= self.train_samples <= 1787:
            raise ValueError(f"--train_samples must be in [10, 1787] (digits has 1,797 images), got "
                             f"{self.train_samples}.")


def digits_splits(train_samples: int, image_size: int, seed: int = 0) -> tuple[Dataset, Dataset, float, float]:
    """Stratified train/test split of scikit-learn's digits as ``pixel_values``/``labels`` datasets."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target)
    train_idx, test_idx = train_test_split(
        range(len(labels)), train_size=train_samples, stratify=labels.numpy(), random_state=seed
    )
    mean, std = images[train_idx].mean().item(), images[train_idx].std().item()
    images = (images - mean) / std

    def split(indices: list[int]) -> Dataset:
        return Dataset.from_dict(
            {"pixel_values": images[indices].numpy(), "labels": labels[indices].numpy()}
        ).with_format("torch")

    return split(train_idx), split(test_idx), mean, std


def _run_args(base: DistillationArguments, output_dir: Path, epochs: int, method: str,
              user_loss_fields: dict[str, Any]) -> DistillationArguments:
    """Training settings shared by teacher and students (SGD, cosine, no checkpoints), the method's loss preset,
    then the loss fields the user gave."""
    return DistillationArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, per_device_train_batch_size=32,
        per_device_eval_batch_size=256, learning_rate=0.05, optim="sgd", optim_args="momentum=0.9",
        weight_decay=5e-4, lr_scheduler_type="cosine", warmup_steps=0, save_strategy="no", eval_strategy="no",
        logging_steps=20, report_to=base.report_to, seed=base.seed, use_cpu=base.use_cpu,
        disable_tqdm=base.disable_tqdm, dataloader_drop_last=True, dataloader_pin_memory=False,
        overwrite_output_dir=True, **{**method_preset(method), **user_loss_fields},
    )


def run_quickstart(options: QuickstartArguments, base: DistillationArguments,
                   user_loss_fields: dict[str, Any] | None = None) -> list[dict]:
    """Train the teacher, then one student per method; return one result row per model."""
    train, test, mean, std = digits_splits(options.train_samples, options.image_size, base.seed)
    model_kwargs = dict(num_labels=10, num_channels=1, image_size=options.image_size, image_mean=[mean],
                        image_std=[std])
    root = Path(base.output_dir)
    rows = []

    torch.manual_seed(base.seed)
    teacher = create_cifar_model(options.teacher_arch, **model_kwargs)
    start = time.perf_counter()
    trainer = DistillationTrainer(teacher, None, _run_args(base, root / "teacher", options.teacher_epochs, "ce", {}),
                                  train_dataset=train, eval_dataset=test)
    trainer.train()
    rows.append(_row("teacher (CE)", options.teacher_arch, trainer, start))

    for method in options.method_list:
        torch.manual_seed(base.seed)
        student = create_cifar_model(options.student_arch, **model_kwargs)
        args = _run_args(base, root / method, options.student_epochs, method, user_loss_fields or {})
        start = time.perf_counter()
        trainer = DistillationTrainer(student, teacher if args.uses_teacher else None, args, train_dataset=train,
                                      eval_dataset=test)
        trainer.train()
        rows.append(_row(f"student ({method.upper()})", options.student_arch, trainer, start))
    return rows


def _row(name: str, arch: str, trainer: DistillationTrainer, start: float) -> dict:
    metrics = trainer.evaluate()
    return {"model": name, "arch": arch, "params": sum(p.numel() for p in trainer.student.parameters()),
            "top1": round(metrics["eval_top1"], 2), "seconds": round(time.perf_counter() - start, 1)}


def format_table(rows: list[dict], options: QuickstartArguments, base: DistillationArguments) -> str:
    lines = [
        f"digits (scikit-learn), {options.train_samples} train / {1797 - options.train_samples} test images, "
        f"{options.image_size}x{options.image_size}, seed {base.seed}",
        "",
        "| model | arch | params | top-1 (%) | train+eval time (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['model']} | {r['arch']} | {r['params']:,} | {r['top1']:.2f} | {r['seconds']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    (options, base), explicit = parse_recipe_args(
        (QuickstartArguments, DistillationArguments),
        defaults={"output_dir": "outputs/quickstart", "report_to": "none", "disable_tqdm": True},
        argv=list(sys.argv[1:] if argv is None else argv),
    )
    rows = run_quickstart(options, base, {k: getattr(base, k) for k in LOSS_FIELDS if k in explicit})
    if base.should_log:  # main process only under accelerate launch
        table = format_table(rows, options, base)
        print("\n" + table)
        if options.results_file:
            Path(options.results_file).parent.mkdir(parents=True, exist_ok=True)
            Path(options.results_file).write_text(table + "\n")
            Path(options.results_file).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
