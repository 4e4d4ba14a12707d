"""The offline quickstart: teacher, then CE / KD / SRD students on scikit-learn's digits, and a results table.

Runs anywhere with no network: the data ships with scikit-learn (1,797 8x8 grey digits, upsampled to 16x16),
the models are the package's CIFAR ResNets (teacher ResNet20, student ResNet8) trained from scratch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from .cli import parse_recipe_args
from .config import DistillationArguments
from .metrics import compute_accuracy
from .models import create_cifar_model
from .trainer import DistillationTrainer

METHODS = {
    # name: DistillationArguments overrides (everything else: the paper's defaults)
    "ce": {"logit_loss": "none", "feature_loss_weight": 0.0},
    "kd": {"logit_loss": "kl", "feature_loss_weight": 0.0},
    "srd": {"logit_loss": "kl", "feature_loss_weight": 2.0},
}


@dataclass
class QuickstartArguments:
    teacher_arch: str = field(default="resnet20", metadata={"help": "CIFAR architecture of the teacher."})
    student_arch: str = field(default="resnet8", metadata={"help": "CIFAR architecture of the student."})
    train_samples: int = field(default=500, metadata={"help": "Training images (the rest of the 1,797 are test)."})
    teacher_epochs: int = field(default=20, metadata={"help": "Epochs of CE training for the teacher."})
    student_epochs: int = field(default=15, metadata={"help": "Epochs for each student."})
    methods: str = field(default="ce,kd,srd", metadata={"help": f"Comma-separated subset of {list(METHODS)}."})
    image_size: int = field(default=8, metadata={"help": "Digits are 8x8; a larger size upsamples them (bilinear)."})
    results_file: str | None = field(default=None, metadata={"help": "Also write the table (markdown) here."})


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


def _common_args(output_dir: Path, epochs: int, base: DistillationArguments) -> dict:
    """Training settings shared by teacher and students: SGD, cosine schedule, no checkpoints."""
    return dict(
        output_dir=str(output_dir), num_train_epochs=epochs, per_device_train_batch_size=32,
        per_device_eval_batch_size=256, learning_rate=0.05, optim="sgd", optim_args="momentum=0.9",
        weight_decay=5e-4, lr_scheduler_type="cosine", warmup_steps=0, save_strategy="no", eval_strategy="no",
        logging_steps=20, report_to=base.report_to, seed=base.seed, use_cpu=base.use_cpu,
        disable_tqdm=base.disable_tqdm, dataloader_drop_last=True, dataloader_pin_memory=False,
    )


def run_quickstart(options: QuickstartArguments, base: DistillationArguments) -> list[dict]:
    """Train the teacher, then one student per method; return one result row per model."""
    train, test, mean, std = digits_splits(options.train_samples, options.image_size, base.seed)
    model_kwargs = dict(num_labels=10, num_channels=1, image_size=options.image_size, image_mean=[mean],
                        image_std=[std])
    root = Path(base.output_dir)
    rows = []

    torch.manual_seed(base.seed)
    teacher = create_cifar_model(options.teacher_arch, **model_kwargs)
    start = time.perf_counter()
    teacher_trainer = Trainer(
        model=teacher,
        args=TrainingArguments(**_common_args(root / "teacher", options.teacher_epochs, base)),
        train_dataset=train, eval_dataset=test, compute_metrics=compute_accuracy,
    )
    teacher_trainer.train()
    rows.append(_row("teacher (CE)", options.teacher_arch, teacher_trainer, start))

    for method in [m.strip() for m in options.methods.split(",") if m.strip()]:
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r} in --methods: expected some of {list(METHODS)}.")
        torch.manual_seed(base.seed)
        student = create_cifar_model(options.student_arch, **model_kwargs)
        args = DistillationArguments(
            **_common_args(root / method, options.student_epochs, base),
            **{**_method_defaults(base), **METHODS[method]},
        )
        start = time.perf_counter()
        trainer = DistillationTrainer(student, teacher, args, train_dataset=train, eval_dataset=test)
        trainer.train()
        rows.append(_row(f"student ({method.upper()})", options.student_arch, trainer, start))
    return rows


def _method_defaults(base: DistillationArguments) -> dict:
    """The distillation knobs the user may have changed on the command line (exponent, norm, projector...)."""
    names = ("feature_loss", "logsum_exponent", "projector", "feature_norm", "temperature", "logit_loss_weight",
             "ce_weight", "dkd_alpha", "dkd_beta")
    return {name: getattr(base, name) for name in names}


def _row(name: str, arch: str, trainer: Trainer, start: float) -> dict:
    metrics = trainer.evaluate()
    parameters = sum(p.numel() for p in trainer.model.parameters()) if not isinstance(
        trainer, DistillationTrainer) else sum(p.numel() for p in trainer.student.parameters())
    return {"model": name, "arch": arch, "params": parameters, "top1": round(metrics["eval_top1"], 2),
            "seconds": round(time.perf_counter() - start, 1)}


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
    options, base = parse_recipe_args(
        (QuickstartArguments, DistillationArguments),
        defaults={"output_dir": "outputs/quickstart", "report_to": "none", "disable_tqdm": True},
        argv=argv,
    )
    rows = run_quickstart(options, base)
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
