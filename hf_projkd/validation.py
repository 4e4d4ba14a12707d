"""Checks of the setup and data that ``DistillationTrainer`` runs before training, and the one it runs during it.

Each check fails with an error that says what was expected, what was found and how to fix it, so that a
mistake stops the run in its first seconds instead of training something silently wrong for days.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .data.loading import LABEL_COLUMNS, check_label_range

logger = logging.getLogger(__name__)

Normalization = tuple[tuple[float, ...], tuple[float, ...]]
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


# -- teacher vs student ----------------------------------------------------------------------------------------
def input_normalization(model: nn.Module, processor: Any = None) -> Normalization | None:
    """(mean, std) the model's inputs are normalised with: from an image processor, a transformers config
    (``image_mean`` / ``image_std``) or timm's ``pretrained_cfg``; None when the model does not say."""
    candidates = [processor, getattr(model, "config", None)]
    for owner in (model, getattr(model, "timm_model", None)):
        cfg = getattr(owner, "pretrained_cfg", None)
        if isinstance(cfg, Mapping):
            candidates.append(cfg)
    for source in candidates:
        if source is None:
            continue
        get = source.get if isinstance(source, Mapping) else lambda key, s=source: getattr(s, key, None)
        mean = get("image_mean") if get("image_mean") is not None else get("mean")
        std = get("image_std") if get("image_std") is not None else get("std")
        if mean is not None and std is not None:
            return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return None


class TeacherInputNormalizer:
    """Turns pixels normalised for the student into pixels normalised for the teacher (what timm's distillation
    task does): ``x_t = (x_s * std_s + mean_s - mean_t) / std_t``, per channel."""

    def __init__(self, student: Normalization, teacher: Normalization) -> None:
        (mean_s, std_s), (mean_t, std_t) = student, teacher
        self.scale = torch.tensor(std_s) / torch.tensor(std_t)
        self.shift = (torch.tensor(mean_s) - torch.tensor(mean_t)) / torch.tensor(std_t)
        self.student, self.teacher = student, teacher

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (pixel_values.dim() - 2)
        scale = self.scale.to(pixel_values.device, pixel_values.dtype).view(shape)
        shift = self.shift.to(pixel_values.device, pixel_values.dtype).view(shape)
        return pixel_values * scale + shift


def teacher_input_normalizer(
    student: nn.Module, teacher: nn.Module, renormalize: bool = True, processor: Any = None
) -> TeacherInputNormalizer | None:
    """A ``TeacherInputNormalizer`` when student and teacher declare different normalisations, else None.

    With ``renormalize=False`` a difference is an error instead: the teacher would otherwise see inputs with the
    wrong statistics and give poor targets without any visible failure.
    """
    student_norm, teacher_norm = input_normalization(student, processor), input_normalization(teacher)
    if student_norm is None or teacher_norm is None or _close(student_norm, teacher_norm):
        return None
    if not renormalize:
        raise ValueError(
            f"The student's inputs are normalised with mean/std {student_norm} but the teacher expects "
            f"{teacher_norm}. Set renormalize_teacher_inputs=True to convert the batch for the teacher, or pass "
            "'teacher_pixel_values' prepared with the teacher's own transform in each batch."
        )
    logger.info("Teacher inputs are re-normalised from the student's mean/std %s to the teacher's %s.",
                student_norm, teacher_norm)
    return TeacherInputNormalizer(student_norm, teacher_norm)


def _close(a: Normalization, b: Normalization) -> bool:
    flat_a, flat_b = [*a[0], *a[1]], [*b[0], *b[1]]
    return len(flat_a) == len(flat_b) and all(abs(x - y) < 1e-6 for x, y in zip(flat_a, flat_b, strict=True))


def label_names(model: nn.Module) -> list[str] | None:
    """Class names of a model in class-index order, or None when it only has the default ``LABEL_<i>`` names."""
    config = getattr(model, "config", None)
    id2label = getattr(config, "id2label", None)
    if id2label:
        names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    else:
        timm_model = getattr(model, "timm_model", model)
        cfg = getattr(timm_model, "pretrained_cfg", None)
        names = list(cfg.get("label_names") or []) if isinstance(cfg, Mapping) else []
    if not names or all(_DEFAULT_LABEL.match(name) for name in names):
        return None
    return names


def check_label_names(student: nn.Module, teacher: nn.Module) -> None:
    """Student and teacher must mean the same class by the same logit index for a logit loss to make sense."""
    student_names, teacher_names = label_names(student), label_names(teacher)
    if student_names is None or teacher_names is None or student_names == teacher_names:
        return
    differ = [(i, s, t) for i, (s, t) in enumerate(zip(student_names, teacher_names, strict=False)) if s != t][:5]
    how = ("the same classes in another order" if sorted(student_names) == sorted(teacher_names)
           else "different classes")
    raise ValueError(
        f"The student's and the teacher's class names differ ({how}); first differences (index, student, "
        f"teacher): {differ}. The logit loss compares logits index by index, so it would teach wrong classes. "
        "Give the student the teacher's id2label/label2id (and labels in that order), or set logit_loss='none'."
    )


def probe_failure_message(
    teacher: nn.Module, student_size: tuple[int, ...], teacher_size: tuple[int, ...] | None, error: Exception
) -> str:
    """Why the teacher cannot run on the student's inputs, and the two ways out."""
    expects = f"expects {teacher_size} inputs" if teacher_size else "does not declare its input size"
    return (
        f"The teacher ({type(teacher).__name__}) {expects} and failed on the student's input size {student_size} "
        f"({error}). Prepare inputs at the teacher's size and pass them as 'teacher_pixel_values' in each batch, "
        "or use a teacher that accepts the student's resolution (pass input_size=(C, H, W) if it was mis-inferred)."
    )


# -- data and batch size ---------------------------------------------------------------------------------------
def check_train_dataset(dataset: Any, num_classes: int, args: Any, split: str = "train") -> None:
    """Non-empty, labels within ``[0, num_classes)``, and no per-device batch of 1 under batch norm."""
    if dataset is None:
        return
    try:
        size = len(dataset)
    except TypeError:  # iterable / streaming datasets: nothing to check without reading them
        return
    if size == 0:
        raise ValueError(
            f"The {split} dataset is empty (0 examples). Check the split name, the data path and any filter or "
            "select applied to it."
        )
    columns = getattr(dataset, "column_names", None) or []
    column = next((name for name in ("labels", *LABEL_COLUMNS) if name in columns), None)
    if column is not None:
        check_label_range(dataset, num_classes, column, split=split)
    if split == "train" and getattr(args, "feature_norm", None) == "batchnorm" and args.feature_loss_weight > 0:
        check_batch_norm_batches(size, args)


def check_batch_norm_batches(num_examples: int, args: Any) -> None:
    """Batch-norm statistics of one sample are undefined: refuse a per-device batch of 1, including the last one."""
    batch = args.per_device_train_batch_size
    if batch < 2:
        raise ValueError(
            f"per_device_train_batch_size={batch}, but feature_norm='batchnorm' needs at least 2 samples per device "
            "(the statistics of one sample are undefined). Raise per_device_train_batch_size or use "
            "feature_norm='layernorm'."
        )
    if args.world_size == 1 and not args.dataloader_drop_last and num_examples % batch == 1:
        raise ValueError(
            f"{num_examples} training examples in batches of {batch} leave a last batch of 1, on which "
            "feature_norm='batchnorm' is undefined. Set dataloader_drop_last=True or change the batch size."
        )


def check_batch(inputs: Mapping[str, Any]) -> None:
    """A training batch must carry ``pixel_values``; say which keys it has instead of a bare KeyError."""
    if "pixel_values" not in inputs:
        raise KeyError(
            f"The batch has no 'pixel_values' (its keys: {sorted(inputs)}). Return 'pixel_values' (and 'labels') "
            "from your transform/collator; with load_image_dataset, name the image column with --image_column."
        )


# -- during training -------------------------------------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard:
    """Records, without a device sync per step, whether any loss component was NaN/inf; ``check`` raises.

    The trainer calls ``check`` before every log and checkpoint, so a diverged run stops before it can
    overwrite anything with NaN weights, and the last checkpoint written is the last good one.
    """

    def __init__(self) -> None:
        self._bad: dict[str, torch.Tensor] = {}
        self.checked_step = 0

    def observe(self, components: Mapping[str, torch.Tensor | None]) -> None:
        for name, value in components.items():
            if value is None:
                continue
            bad = ~torch.isfinite(value.detach()).all()
            self._bad[name] = bad if name not in self._bad else self._bad[name] | bad

    def check(
        self, step: int, output_dir: str | None = None, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        """Raise ``NonFiniteLossError`` naming the component(s) if any was NaN/inf since the last check.

        ``reduce`` (a sum over processes) makes every process see the same flags and stop together, instead of
        one raising while the others wait in the next collective.
        """
        names = sorted(self._bad)
        flags = torch.stack([self._bad[name] for name in names]).int() if names else None
        if flags is not None and reduce is not None:
            flags = reduce(flags)
        bad = [name for name, flag in zip(names, flags.tolist() if flags is not None else [], strict=True) if flag]
        self._bad = {}
        if not bad:
            self.checked_step = step
            return
        from .checkpointing import latest_complete_checkpoint

        last_good = latest_complete_checkpoint(output_dir) if output_dir else None
        parts = [name for name in bad if name != "loss"] or ["loss (the weighted sum; every component was finite)"]
        kept = (f"The last good checkpoint is {last_good}: resume from it" if last_good else
                "No complete checkpoint was written before: restart")
        raise NonFiniteLossError(
            f"The training loss became NaN/inf between steps {self.checked_step} and {step}, in {', '.join(parts)}. "
            f"Training stopped before writing anything. {kept} after the fix. Usual causes: a learning rate too "
            "high (lower it, set max_grad_norm), fp16 overflow (use bf16), NaN/inf in the inputs, or a large "
            "logsum_exponent with feature_norm='none'."
        )
