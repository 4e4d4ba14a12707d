"""CIFAR distillation recipe: ``python recipes/cifar.py --teacher <path or id> --student resnet8x4 --method srd+kd``.

Methods: the presets of ``hf_projkd.METHOD_PRESETS`` (ce, kd, dkd, srd, srd+kd = the paper's recipe, srd+dkd).
Protocol: ``recipes/configs/crd.yaml`` (the CRD protocol: SGD 0.9, lr 0.05, wd 5e-4 on all parameters, batch 64,
240 epochs, lr x0.1 at 150/180/210, crop 32 pad 4 + flip). Data by Hub id (default uoft-cs/cifar100) or a local
parquet / image folder (``--dataset ../shared/data/cifar10-jpeg``). Every field can be set from ``--config
file.yaml`` or the command line (``--help`` lists them); ``--resume_from_checkpoint true`` resumes the newest intact
checkpoint in ``--output_dir``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from hf_projkd import METHODS, DistillationArguments, DistillationTrainer, create_student, load_image_classifier
from hf_projkd.cli import parse_recipe_args
from hf_projkd.data.cifar import CifarCollator, CifarTensorDataset, DecodedSplits, load_decoded_splits
from hf_projkd.families import adapter_for
from hf_projkd.models import CIFAR100_MEAN, CIFAR100_STD

CONFIGS = Path(__file__).resolve().parent / "configs"
PROTOCOL = CONFIGS / "crd.yaml"


@dataclass
class CifarRecipeArguments:
    """What the CIFAR recipes add to ``DistillationArguments``: method, models and data."""

    method: str = field(default="srd+kd", metadata={"help": f"One of {METHODS}; sets the loss fields (flags win)."})
    student: str = field(
        default="resnet8x4",
        metadata={"help": "A CIFAR architecture name (resnet8x4, wrn_16_2, ...) trained from scratch, or a local "
                  "folder / timm / transformers id (its head is re-initialised for the dataset's classes)."},
    )
    teacher: str | None = field(
        default=None,
        metadata={"help": "Teacher folder or id, or a CIFAR-10 ResNet .safetensors file such as "
                  "../shared/weights/cifar10-resnet/cifar10_resnet56.safetensors (sets teacher_model_name_or_path)."},
    )
    dataset: str = field(
        default="uoft-cs/cifar100",
        metadata={"help": "Hub id (uoft-cs/cifar100, uoft-cs/cifar10), a parquet file/folder or an image folder."},
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: first usual name)."})
    label_column: str | None = field(
        default=None, metadata={"help": "Label column (default: first usual name; cifar100 -> fine_label)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="test", metadata={"help": "Split to evaluate on (CIFAR has no validation)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a fixed random subset of this size (seed 0)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N eval images."})
    image_size: int | None = field(default=None, metadata={"help": "Resize images to this side at decode time."})
    padding: int = field(default=4, metadata={"help": "Zero padding of the random crop (0: no crop)."})
    image_mean: str = field(
        default=",".join(str(v) for v in CIFAR100_MEAN), metadata={"help": "Student input mean, comma-separated."}
    )
    image_std: str = field(
        default=",".join(str(v) for v in CIFAR100_STD), metadata={"help": "Student input std, comma-separated."}
    )
    channels_last: bool = field(
        default=True,
        metadata={"help": "Student and teacher in channels_last memory format (2-3x faster small convs on CPU)."},
    )
    data_on_device: bool = field(
        default=False,
        metadata={"help": "The CRD protocol's fast path: keep the decoded images on the training device (GPU) and "
                  "crop, flip and normalise whole batches there, with no per-step host work (sets "
                  "dataloader_num_workers 0, no pinned memory). Add --torch_compile true --torch_compile_mode "
                  "reduce-overhead --teacher_compile true to replay each step as CUDA graphs. Same losses as the "
                  "default path."},
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method {self.method!r} is not supported: expected one of {METHODS}.")
        for name in ("max_train_samples", "max_eval_samples", "image_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (or left unset), got {getattr(self, name)}.")
        self.mean, self.std = _floats(self.image_mean, "image_mean"), _floats(self.image_std, "image_std")


def _floats(text: str, name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in str(text).split(",") if v.strip())
    if len(values) != 3:
        example = ",".join(str(v) for v in (CIFAR100_MEAN if name == "image_mean" else CIFAR100_STD))
        raise ValueError(f"--{name} needs 3 comma-separated values (one per RGB channel), got {text!r}: e.g. "
                         f"--{name} {example} (CIFAR-100's).")
    return values


def parse(argv: list[str] | None = None, defaults: dict[str, Any] | None = None):
    """(recipe arguments, DistillationArguments): crd.yaml < defaults < --method preset < --config < flags."""
    (recipe, args), _ = parse_recipe_args((CifarRecipeArguments, DistillationArguments), [PROTOCOL], defaults, argv)
    if recipe.teacher is not None:
        if args.teacher_model_name_or_path not in (None, recipe.teacher):
            raise ValueError(f"--teacher {recipe.teacher!r} and --teacher_model_name_or_path "
                             f"{args.teacher_model_name_or_path!r} differ: pass one of them.")
        args.teacher_model_name_or_path = recipe.teacher
    return recipe, args


def load_data(recipe: CifarRecipeArguments) -> DecodedSplits:
    return load_decoded_splits(recipe.dataset, recipe.train_split, recipe.eval_split, recipe.image_column,
                               recipe.label_column, recipe.max_train_samples, recipe.max_eval_samples,
                               recipe.image_size)


def build_trainer(recipe: CifarRecipeArguments, args: DistillationArguments,
                  data: DecodedSplits | None = None) -> DistillationTrainer:
    """The trainer of one run: the student from scratch, the teacher (not for ``ce``), the CRD data pipeline."""
    data = data if data is not None else load_data(recipe)
    set_seed(args.seed)  # the Trainer seeds only after the model exists: seed the student's initialisation here
    student = create_student(recipe.student, data.class_names, data.train.pixels.shape[-1], image_mean=recipe.mean,
                             image_std=recipe.std, cifar_first=True)
    teacher = None
    if args.uses_teacher:
        if args.teacher_model_name_or_path is None:
            raise ValueError(f"--method {recipe.method} needs a teacher: pass --teacher <folder, id or .safetensors>.")
        teacher = load_image_classifier(args.teacher_model_name_or_path)
    declared = adapter_for(student).input_normalization()
    student_stats = declared.values if declared is not None and not declared.assumed else (recipe.mean, recipe.std)
    teacher_stats = None
    if teacher is not None:
        declared_teacher = adapter_for(teacher).input_normalization()
        teacher_stats = declared_teacher.values if declared_teacher is not None else None
    if recipe.channels_last:
        student = student.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last) if teacher is not None else None
    train, evaluation = data.train, data.eval
    if recipe.data_on_device:
        train, evaluation = train.to(args.device), evaluation.to(args.device)
        args.dataloader_num_workers, args.dataloader_pin_memory = 0, False
    collator = CifarCollator(*student_stats, *(teacher_stats or (None, None)))
    batched = recipe.data_on_device or None
    return DistillationTrainer(
        student, teacher, args,
        # the dataset shuffles itself per (seed, epoch) and the Trainer reads it in order (crd.yaml): the same
        # batches on the default and the on-device path
        train_dataset=CifarTensorDataset(train, augment=True, padding=recipe.padding, seed=args.seed, shuffle=True,
                                         batched=batched),
        eval_dataset=CifarTensorDataset(evaluation, augment=False, batched=batched),
        data_collator=collator,
    )


def run(recipe: CifarRecipeArguments, args: DistillationArguments, data: DecodedSplits | None = None) -> dict:
    """Train (or resume), evaluate on the eval split, save the student to ``output_dir`` with ``cifar_results.json``."""
    start = time.perf_counter()
    trainer = build_trainer(recipe, args, data)
    train_output = trainer.train()
    metrics = trainer.evaluate()
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    results = {
        "method": recipe.method,
        "student": recipe.student,
        "teacher": args.teacher_model_name_or_path,
        "dataset": recipe.dataset,
        "seed": args.seed,
        "train_samples": len(trainer.train_dataset),
        "eval_samples": len(trainer.eval_dataset),
        "epochs": args.num_train_epochs,
        "global_steps": train_output.global_step,
        "train_loss": train_output.training_loss,
        "last_train_log": train_logs[-1] if train_logs else {},
        "top1": metrics.get("eval_top1"),
        "top5": metrics.get("eval_top5"),
        "teacher_top1": metrics.get("eval_teacher_top1"),
        "teacher_agreement": metrics.get("eval_teacher_agreement"),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    trainer.save_model(args.output_dir)
    if args.should_save:
        Path(args.output_dir, "cifar_results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> dict:
    recipe, args = parse(list(sys.argv[1:] if argv is None else argv))
    results = run(recipe, args)
    if args.should_log:
        print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
