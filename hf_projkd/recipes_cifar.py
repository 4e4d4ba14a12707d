"""Shared logic of the CIFAR recipes (``recipes/cifar.py``, ``recipes/train_teacher.py``) and the CIFAR benchmark.

The recipes stay thin: they parse ``CifarRecipeArguments`` + ``DistillationArguments`` with
``hf_projkd.cli.parse_recipe_args`` (recipe defaults < ``--config`` file < CLI flags) and call ``run_cifar``.

Defaults follow the CRD protocol (METHOD.md): SGD momentum 0.9, lr 0.05, weight decay 5e-4 on all parameters,
batch 64, 240 epochs with the learning rate x0.1 at epochs 150/180/210, random crop 32 pad 4 + flip. The decay
points are stored as fractions of the run (150/240, 180/240, 210/240) so that a shorter run keeps their shape.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import ClassLabel, Dataset
from torch import nn
from transformers import Trainer, set_seed
from transformers.modeling_outputs import ImageClassifierOutput

from .config import DistillationArguments
from .data.cifar import CifarCollator, CifarTensorDataset, DecodedImages, decode_image_dataset
from .data.loading import load_image_dataset, resolve_columns
from .loading import load_image_classifier
from .losses import classification_loss
from .metrics import compute_accuracy
from .models import CIFAR100_MEAN, CIFAR100_STD, create_cifar_model, load_cifar10_resnet
from .models.configuration_cifar import normalize_architecture_name
from .schedules import StepDecayMixin
from .trainer import DistillationTrainer

#: Loss settings of each method; everything else (optimizer, schedule, data, budget) is shared.
#: kd: Hinton KD as in the CRD benchmark (the paper's "KD" column): 0.1 CE + 0.9 KL at T = 4.
#: dkd: CE + DKD (alpha 1, beta 8, T 4; the DKD paper's 20-epoch warm-up of the DKD weight is not applied).
#: srd: CE + w * LogSum on projected, batch-normalised features (w = 2, alpha = 4); srd+kd is the paper's
#: recipe CE + LogSum + KL(T = 1); srd+dkd is "Ours + DKD".
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "ce": {"feature_loss_weight": 0.0, "logit_loss": "none", "ce_weight": 1.0},
    "kd": {"feature_loss_weight": 0.0, "logit_loss": "kl", "temperature": 4.0, "ce_weight": 0.1,
           "logit_loss_weight": 0.9},
    "dkd": {"feature_loss_weight": 0.0, "logit_loss": "dkd", "temperature": 4.0, "dkd_alpha": 1.0, "dkd_beta": 8.0},
    "srd": {"feature_loss_weight": 2.0, "logit_loss": "none", "logsum_exponent": 4.0},
    "srd+kd": {"feature_loss_weight": 2.0, "logit_loss": "kl", "temperature": 1.0, "logit_loss_weight": 1.0},
    "srd+dkd": {"feature_loss_weight": 2.0, "logit_loss": "dkd", "temperature": 4.0, "dkd_alpha": 1.0,
                "dkd_beta": 8.0},
}
METHODS = tuple(METHOD_PRESETS)

#: CRD protocol (METHOD.md) as ``DistillationArguments`` defaults of the recipes.
CRD_PROTOCOL: dict[str, Any] = {
    "num_train_epochs": 240,
    "learning_rate": 0.05,
    "optim": "sgd",
    "optim_args": "momentum=0.9",
    "weight_decay": 5e-4,
    "weight_decay_filter": "all",
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "lr_scheduler_type": "constant",  # replaced by the step decay of CifarRecipeArguments.lr_decay_at
    "warmup_steps": 0,
    "eval_strategy": "no",
    "save_strategy": "no",
    "logging_steps": 50,
    "report_to": "none",
    "output_dir": "cifar_output",
}


@dataclass
class CifarRecipeArguments:
    """What the CIFAR recipes add to ``DistillationArguments``: method, models, data and the step schedule."""

    method: str = field(default="srd+kd", metadata={"help": f"One of {METHODS}; sets the loss fields (CLI wins)."})
    student: str = field(
        default="resnet8x4",
        metadata={"help": "A CIFAR architecture name (resnet8x4, wrn_16_2, ...) trained from scratch, or a local "
                  "folder / timm / transformers id (its head is re-initialised for the dataset's classes)."},
    )
    teacher: str | None = field(
        default=None,
        metadata={"help": "Teacher folder or id (alias of --teacher_model_name_or_path), or a CIFAR-10 ResNet "
                  ".safetensors file such as ../shared/weights/cifar10-resnet/cifar10_resnet56.safetensors."},
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
    lr_decay_at: str = field(
        default="0.625,0.75,0.875",
        metadata={"help": "Fractions of training at which the lr is multiplied by lr_decay_rate (CRD: 150/180/210 "
                  "of 240 epochs). Empty: keep lr_scheduler_type."},
    )
    lr_decay_rate: float = field(default=0.1, metadata={"help": "Factor of each step decay."})
    channels_last: bool = field(
        default=True,
        metadata={"help": "Student and teacher in channels_last memory format (2-3x faster small convs on CPU)."},
    )

    def __post_init__(self) -> None:
        if self.method not in METHOD_PRESETS:
            raise ValueError(f"--method {self.method!r} is not supported: expected one of {METHODS}.")
        for fraction in self.decay_fractions:
            if not 0.0 < fraction < 1.0:
                raise ValueError(f"--lr_decay_at values must be fractions in (0, 1), got {self.lr_decay_at!r}.")

    @property
    def decay_fractions(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.lr_decay_at.split(",") if v.strip())

    @property
    def mean(self) -> tuple[float, ...]:
        return _floats(self.image_mean, "image_mean")

    @property
    def std(self) -> tuple[float, ...]:
        return _floats(self.image_std, "image_std")


def _floats(text: str, name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(",") if v.strip())
    if len(values) != 3:
        raise ValueError(f"--{name} needs 3 comma-separated values (one per RGB channel), got {text!r}.")
    return values


def recipe_defaults(argv: list[str], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """CRD protocol + the loss preset of the ``--method`` found in ``argv`` (or its ``--config`` file).

    The preset is applied as defaults, so ``--method kd --temperature 2`` still gets T = 2.
    """
    from .cli import read_config_file

    method = CifarRecipeArguments.method
    if "--config" in argv:
        method = read_config_file(argv[argv.index("--config") + 1]).get("method", method)
    if "--method" in argv:
        method = argv[argv.index("--method") + 1]
    if method not in METHOD_PRESETS:
        raise ValueError(f"--method {method!r} is not supported: expected one of {METHODS}.")
    return {**CRD_PROTOCOL, **(base or {}), **METHOD_PRESETS[method]}


# -- trainers ------------------------------------------------------------------------------------------------
class CrdStepDecayMixin(StepDecayMixin):
    """Multiplies the learning rate by ``lr_decay_rate`` at fixed fractions of the run (the CRD schedule)."""

    lr_decay_at: tuple[float, ...] = ()

    def lr_milestones(self, num_training_steps: int) -> list[int]:
        return sorted({max(1, round(f * num_training_steps)) for f in self.lr_decay_at})


class ClassifierTrainer(Trainer):
    """Cross-entropy training of any classifier (CIFAR net, timm or transformers) on ``pixel_values``/``labels``.

    Used for teachers and for the no-teacher ``ce`` baseline: same loss function, label smoothing and weight
    decay filter as ``DistillationTrainer``, so that baselines differ from distillation only by the teacher terms.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(self, model: nn.Module, args: DistillationArguments, **kwargs: Any) -> None:
        if not args.label_names:
            args.label_names = ["labels"]  # timm models have no `labels` argument to infer it from
        kwargs.setdefault("compute_metrics", compute_accuracy)
        # compute_loss applies label smoothing itself; the Trainer's own smoother would read `model.config`,
        # which timm models do not have, so it is built with smoothing off and the factor restored afterwards
        smoothing, args.label_smoothing_factor = args.label_smoothing_factor, 0.0
        try:
            super().__init__(model=model, args=args, **kwargs)
        finally:
            args.label_smoothing_factor = smoothing

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ImageClassifierOutput]:
        output = model(inputs["pixel_values"])
        logits = output if isinstance(output, torch.Tensor) else output.logits
        loss = classification_loss(logits, inputs["labels"], self.args.label_smoothing_factor)
        return (loss, ImageClassifierOutput(loss=loss, logits=logits)) if return_outputs else loss

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Same filter as ``DistillationTrainer``: ``all`` (CNN protocols), ``no_1d`` or ``transformers``."""
        if self.args.weight_decay_filter == "transformers":
            return super().get_decay_parameter_names(model)
        return [n for n, p in model.named_parameters() if self.args.weight_decay_filter == "all" or p.ndim > 1]

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        from .serialization import save_student

        if self.args.should_save:
            save_student(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)


class CifarClassifierTrainer(CrdStepDecayMixin, ClassifierTrainer):
    """``ClassifierTrainer`` with the CRD step schedule."""


class CifarDistillationTrainer(CrdStepDecayMixin, DistillationTrainer):
    """``DistillationTrainer`` with the CRD step schedule."""


# -- models and data -----------------------------------------------------------------------------------------
def load_teacher(name_or_path: str) -> nn.Module:
    """A teacher from a folder / id (timm or transformers), or a CIFAR-10 ResNet ``.safetensors`` file."""
    path = Path(name_or_path)
    if path.suffix == ".safetensors" and path.is_file():
        return load_cifar10_resnet(path)
    return load_image_classifier(name_or_path)


def build_student(
    name: str, num_labels: int, mean: tuple[float, ...], std: tuple[float, ...], id2label: dict[int, str] | None = None
) -> nn.Module:
    """A from-scratch CIFAR network by architecture name, else a pretrained model with a new head."""
    try:
        architecture = normalize_architecture_name(name)
    except ValueError:
        return load_image_classifier(name, num_labels=num_labels)
    extra = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    return create_cifar_model(architecture, num_labels=num_labels, image_mean=mean, image_std=std, **extra)


def input_statistics(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) a model was trained with, from its transformers config or timm pretrained_cfg."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "image_mean", None) and getattr(config, "image_std", None):
        return tuple(config.image_mean), tuple(config.image_std)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("mean") and cfg.get("std"):
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return None


@dataclass
class CifarData:
    """Decoded train/eval images plus the label names."""

    train: DecodedImages
    eval: DecodedImages
    id2label: dict[int, str]

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


def load_cifar_data(recipe: CifarRecipeArguments) -> CifarData:
    """Load the two splits, take the subsets and decode them once (see ``hf_projkd.data.cifar``)."""
    splits = load_image_dataset(recipe.dataset)
    for split in (recipe.train_split, recipe.eval_split):
        if split not in splits:
            raise ValueError(
                f"{recipe.dataset} has no split {split!r} (it has {list(splits)}): pass --train_split/--eval_split."
            )
    train, evaluation = splits[recipe.train_split], splits[recipe.eval_split]
    image_column, label_column = resolve_columns(train, recipe.image_column, recipe.label_column)
    if recipe.max_train_samples is not None and recipe.max_train_samples < len(train):
        train = train.shuffle(seed=0).select(range(recipe.max_train_samples))
    if recipe.max_eval_samples is not None and recipe.max_eval_samples < len(evaluation):
        evaluation = evaluation.select(range(recipe.max_eval_samples))
    decoded_train = decode_image_dataset(train, image_column, label_column, recipe.image_size)
    decoded_eval = decode_image_dataset(evaluation, image_column, label_column, recipe.image_size)
    return CifarData(decoded_train, decoded_eval, _label_names(train, label_column, decoded_train, decoded_eval))


def _label_names(dataset: Dataset, column: str, *decoded: DecodedImages) -> dict[int, str]:
    feature = dataset.features.get(column)
    if isinstance(feature, ClassLabel):
        return dict(enumerate(feature.names))
    count = int(max(d.labels.max().item() for d in decoded)) + 1
    return {i: str(i) for i in range(count)}


# -- the recipe ------------------------------------------------------------------------------------------------
def build_cifar_trainer(
    recipe: CifarRecipeArguments, args: DistillationArguments, data: CifarData | None = None
) -> Trainer:
    """The trainer of one run: ``CifarClassifierTrainer`` for ``ce``, else ``CifarDistillationTrainer``."""
    data = data if data is not None else load_cifar_data(recipe)
    set_seed(args.seed)  # the Trainer seeds only after the model exists: seed the student's initialisation here
    student = build_student(recipe.student, data.num_labels, recipe.mean, recipe.std, data.id2label)
    student_stats = input_statistics(student) or (recipe.mean, recipe.std)
    kwargs: dict[str, Any] = {
        "train_dataset": CifarTensorDataset(data.train, augment=True, padding=recipe.padding),
        "eval_dataset": CifarTensorDataset(data.eval, augment=False),
    }
    teacher_source = recipe.teacher or args.teacher_model_name_or_path
    if recipe.method == "ce":
        trainer_class, teacher = CifarClassifierTrainer, None
        kwargs["data_collator"] = CifarCollator(*student_stats)
    else:
        if teacher_source is None:
            raise ValueError(f"--method {recipe.method} needs a teacher: pass --teacher <folder, id or .safetensors>.")
        teacher = load_teacher(teacher_source)
        teacher_stats = input_statistics(teacher) or student_stats
        kwargs["data_collator"] = CifarCollator(*student_stats, *teacher_stats)
        kwargs["teacher_model"] = teacher
        kwargs["input_size"] = (3, *data.train.pixels.shape[-2:])
        trainer_class = CifarDistillationTrainer
    if recipe.channels_last:
        student = student.to(memory_format=torch.channels_last)
        if teacher is not None:
            kwargs["teacher_model"] = teacher.to(memory_format=torch.channels_last)
    trainer = trainer_class(model=student, args=args, **kwargs)
    trainer.lr_decay_at, trainer.lr_decay_rate = recipe.decay_fractions, recipe.lr_decay_rate
    return trainer


def run_cifar(recipe: CifarRecipeArguments, args: DistillationArguments, data: CifarData | None = None) -> dict:
    """Train, evaluate on the eval split, save the student to ``output_dir`` and write ``cifar_results.json``."""
    start = time.perf_counter()
    trainer = build_cifar_trainer(recipe, args, data)
    train_output = trainer.train()
    metrics = trainer.evaluate()
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    results = {
        "method": recipe.method,
        "student": recipe.student,
        "teacher": recipe.teacher or args.teacher_model_name_or_path,
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
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    trainer.save_model(args.output_dir)
    if args.should_save:
        Path(args.output_dir, "cifar_results.json").write_text(json.dumps(results, indent=2))
    return results
