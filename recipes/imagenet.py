"""The ImageNet recipes' shared code (``deit_tiny.py``, ``deit_small.py``, ``imagenet_resnet18.py``).

A recipe is a config file (``recipes/configs/deit.yaml``, ``imagenet_resnet18.yaml``: the paper's settings) plus
a few defaults, run by ``main``: data, student, schedule, training (or resuming), evaluation of student and
teacher on the same images, the model card and the student-only push. Arguments: ``RecipeArguments`` +
``ImageNetDataArguments`` + ``DistillationArguments``, from the config < ``--method`` < ``--config`` < flags.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.data import ImageNetInfo
from timm.data.transforms import str_to_pil_interp
from transformers import DeiTImageProcessor, set_seed

from hf_projkd import METHODS, DistillationArguments, DistillationTrainer, create_student, load_image_classifier
from hf_projkd.cli import parse_recipe_args
from hf_projkd.data.device_images import DeviceImageCollator
from hf_projkd.data.imagenet import ImageNetDataArguments, collate_images, load_imagenet
from hf_projkd.families import adapter_for
from hf_projkd.hub import MeasuredResult

logger = logging.getLogger("recipes.imagenet")
CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass
class RecipeArguments:
    """The method, the student, the epoch-based schedule settings, and what the card reports."""

    method: str = field(default="srd+kd", metadata={"help": f"One of {METHODS}; sets the loss fields (flags win)."})
    student: str = field(
        default="deit-tiny",
        metadata={"help": "Student built from scratch: deit-tiny / deit-small (transformers "
                  "DeiTForImageClassificationWithTeacher), a timm architecture name ('resnet18'), or a transformers "
                  "config.json path (model_type 'deit' gets the distillation-token model)."},
    )
    drop_path_rate: float = field(
        default=0.0, metadata={"help": "Stochastic depth rate of the last block (timm students, transformers DeiT)."}
    )
    base_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate for a total batch of lr_reference_batch: learning_rate = base_learning_rate "
                  "x total batch / lr_reference_batch (DeiT: 5e-4 per 512). Ignored when --learning_rate is given."},
    )
    lr_reference_batch: int = field(default=512, metadata={"help": "Batch size base_learning_rate refers to."})
    warmup_epochs: float = field(default=0.0, metadata={"help": "Linear warmup length in epochs (sets warmup_steps)."})
    baseline_results: str | None = field(
        default=None,
        metadata={"help": "JSON file with the measured eval metrics (eval_top1, eval_top5) of a from-scratch "
                  "student run, e.g. its eval_results.json; shown in the card with this path as the source."},
    )
    license: str | None = field(default=None, metadata={"help": "License of the pushed student (card metadata)."})


def machine_defaults() -> dict[str, Any]:
    """Defaults that depend on the machine: bf16 only where it runs, loader workers up to the cores there are."""
    workers = max(0, min(10, (os.cpu_count() or 1) - 1))
    return {"bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
            "dataloader_num_workers": workers, "dataloader_persistent_workers": workers > 0}


def parse(config: str, defaults: dict[str, Any], argv: list[str] | None = None):
    """(recipe, data, distillation) arguments; settings the user gave explicitly always win over recipe rules."""
    groups, explicit = parse_recipe_args(
        (RecipeArguments, ImageNetDataArguments, DistillationArguments), [CONFIGS / config],
        {**defaults, **machine_defaults()}, argv,
    )
    recipe, data_args, args = groups
    if "teacher_dtype" not in explicit and not args.bf16 and args.teacher_dtype == "bfloat16":
        args.teacher_dtype = "auto"  # training without bf16: the config's bf16 teacher would run (slowly) in bf16
    if data_args.decode_on_device:  # the collator decodes on the device, in the main process
        if args.dataloader_num_workers and "dataloader_num_workers" in explicit:
            raise ValueError(f"--decode_on_device true decodes and augments in the main process on the device, so "
                             f"it needs --dataloader_num_workers 0, got {args.dataloader_num_workers}. Drop one of "
                             "the two flags.")
        args.dataloader_num_workers, args.dataloader_pin_memory = 0, False
    if not args.dataloader_num_workers and "dataloader_persistent_workers" not in explicit:
        args.dataloader_persistent_workers = False
    if "learning_rate" in explicit:
        if "base_learning_rate" in explicit:
            raise ValueError("Pass either --learning_rate (used as given) or --base_learning_rate (scaled with the "
                             "total batch), not both.")
        recipe.base_learning_rate = None
        logger.info("learning_rate %g given: the recipe's base-learning-rate rule is off.", args.learning_rate)
    return recipe, data_args, args


def configure_schedule(args: DistillationArguments, recipe: RecipeArguments, num_train: int | None,
                       streaming: bool) -> None:
    """Turn the epoch-based settings into steps: the scaled lr, warmup steps, and max_steps when streaming."""
    total_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if recipe.base_learning_rate is not None:
        args.learning_rate = recipe.base_learning_rate * total_batch / recipe.lr_reference_batch
        logger.info("learning_rate = %g (base %g x batch %d / %d)", args.learning_rate, recipe.base_learning_rate,
                    total_batch, recipe.lr_reference_batch)
    steps_per_epoch = math.ceil(num_train / total_batch) if num_train else None
    if streaming and args.max_steps <= 0:
        if steps_per_epoch is None:
            raise ValueError(
                "Streaming: the train split's size is unknown, so the number of steps cannot be derived from "
                "num_train_epochs. Pass --max_steps N or --num_train_examples (ImageNet: 1281167)."
            )
        args.max_steps = math.ceil(args.num_train_epochs * steps_per_epoch)
    if recipe.warmup_epochs > 0:
        if steps_per_epoch is None:
            raise ValueError("warmup_epochs needs the train split size: pass --num_train_examples.")
        args.warmup_steps = max(1, round(recipe.warmup_epochs * steps_per_epoch))


def attach_preprocessing(student: torch.nn.Module, data_args: ImageNetDataArguments) -> DeiTImageProcessor | None:
    """Record the eval preprocessing with the student: timm ``pretrained_cfg`` (saved in its config.json), or an
    image processor for transformers students (resize shorter side to size/crop_pct, center crop, normalise)."""
    resize = math.floor(data_args.input_size / data_args.crop_pct)  # the same rounding as timm's eval transform
    if adapter_for(student).library == "timm":
        student.pretrained_cfg = {
            **student.pretrained_cfg, "input_size": (3, data_args.input_size, data_args.input_size),
            "crop_pct": data_args.crop_pct, "interpolation": data_args.interpolation,
            "mean": tuple(data_args.image_mean), "std": tuple(data_args.image_std),
        }
        return None
    resample = int(str_to_pil_interp(data_args.interpolation))  # the filter the eval transform uses (timm's table)
    return DeiTImageProcessor(
        size={"shortest_edge": resize}, crop_size={"height": data_args.input_size, "width": data_args.input_size},
        resample=resample, image_mean=list(data_args.image_mean), image_std=list(data_args.image_std),
    )


def align_imagenet_teacher_labels(teacher: torch.nn.Module, class_names: list[str]) -> None:
    """Let a timm teacher that names its classes by WordNet synset (``n01440764``) be compared with a dataset that
    names them by description (``tench, Tinca tinca``, as ``ILSVRC/imagenet-1k`` does): when both are the
    ImageNet-1k classes in the same order, give the teacher the dataset's names. Anything else is left for the
    trainer's class-name check to report."""
    teacher_names = adapter_for(teacher).label_names()
    if teacher_names is None or teacher_names == class_names or not hasattr(teacher, "pretrained_cfg"):
        return
    info = ImageNetInfo()
    if teacher_names == list(info.label_names()) and class_names == list(info.label_descriptions()):
        teacher.pretrained_cfg = {**teacher.pretrained_cfg, "label_names": list(class_names)}


def read_baseline(path: str) -> MeasuredResult:
    """The from-scratch baseline's metrics from a results JSON written by a measured run."""
    values = json.loads(Path(path).read_text())
    top1 = values.get("eval_top1", values.get("top1"))
    if top1 is None:
        raise ValueError(f"--baseline_results {path} has no 'eval_top1' (or 'top1'): found keys {sorted(values)}.")
    return MeasuredResult("from-scratch baseline", top1, values.get("eval_top5", values.get("top5")),
                          f"measured by a separate run, `{path}`")


def run(config: str, defaults: dict[str, Any], argv: list[str] | None = None
        ) -> tuple[DistillationTrainer, dict[str, float]]:
    """Train (or resume), evaluate student and teacher, save the student with its card; push when asked."""
    recipe, data_args, args = parse(config, defaults, argv)
    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING)
    set_seed(args.seed)
    data = load_imagenet(data_args, args.seed)
    student = create_student(recipe.student, data.class_names, data_args.input_size,
                             drop_path_rate=recipe.drop_path_rate)
    processor = attach_preprocessing(student, data_args)
    configure_schedule(args, recipe, data.num_train_examples, data_args.streaming)
    teacher = None
    if args.uses_teacher or args.eval_teacher_metrics:
        teacher = load_image_classifier(args.teacher_model_name_or_path)
        align_imagenet_teacher_labels(teacher, data.class_names)
    if data_args.streaming:
        args.repeated_augmentation = 1
    collator = DeviceImageCollator(data_args, args.device) if data_args.decode_on_device else collate_images
    trainer = DistillationTrainer(
        student, teacher, args, input_size=(3, data_args.input_size, data_args.input_size),
        train_dataset=data.train, eval_dataset=data.eval, data_collator=collator, processing_class=processor,
    )
    train_result = trainer.train()
    trainer.save_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    trainer.model_card_context = {
        "dataset": data_args.dataset_name, "dataset_split": data_args.eval_split, "license": recipe.license,
        "extra_hyperparameters": _data_hyperparameters(recipe, data_args),
        "eval_examples": None if data_args.streaming else len(data.eval),
        "baseline_result": read_baseline(recipe.baseline_results) if recipe.baseline_results else None,
    }
    trainer.create_model_card()
    trainer.save_model()  # the student only; with --push_to_hub also uploads it with the card
    return trainer, metrics


def _data_hyperparameters(recipe: RecipeArguments, data_args: ImageNetDataArguments) -> dict[str, Any]:
    names = ("input_size", "crop_pct", "interpolation", "auto_augment", "reprob", "train_scale_min")
    values = {name: getattr(data_args, name) for name in names}
    values.update(student=recipe.student, base_learning_rate=recipe.base_learning_rate,
                  lr_reference_batch=recipe.lr_reference_batch, warmup_epochs=recipe.warmup_epochs,
                  drop_path_rate=recipe.drop_path_rate)
    return {k: v for k, v in values.items() if v is not None}


def main(config: str, defaults: dict[str, Any], argv: list[str] | None = None) -> dict[str, float]:
    """Entry point of the recipe files: the final eval metrics."""
    return run(config, defaults, list(sys.argv[1:] if argv is None else argv))[1]
