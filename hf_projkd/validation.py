"""Checks of the setup, data and batches that ``DistillationTrainer`` runs, and the non-finite loss guard.

Each check fails with an error that says what was expected, what was found and how to fix it, so that a mistake
stops the run in its first seconds instead of training something silently wrong for days. Batch checks read only
shapes and dtypes (no device sync).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .data.loading import LABEL_COLUMNS, check_label_range
from .families import ModelAdapter, Normalization

logger = logging.getLogger(__name__)


# -- teacher vs student ----------------------------------------------------------------------------------------
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


def same_normalization(a: Normalization, b: Normalization) -> bool:
    flat_a, flat_b = [*a[0], *a[1]], [*b[0], *b[1]]
    return len(flat_a) == len(flat_b) and all(abs(x - y) < 1e-6 for x, y in zip(flat_a, flat_b, strict=True))


def _canonical(name: str) -> str:
    """Class names compared without case, surrounding spaces, or '_' vs ' ' ('Golden_retriever' is
    'golden retriever')."""
    return " ".join(name.replace("_", " ").split()).casefold()


def check_label_names(student: ModelAdapter, teacher: ModelAdapter) -> None:
    """Student and teacher must mean the same class by the same logit index for a logit loss to make sense."""
    student_names, teacher_names = student.label_names(), teacher.label_names()
    if student_names is None or teacher_names is None:
        return
    canonical_s, canonical_t = [_canonical(n) for n in student_names], [_canonical(n) for n in teacher_names]
    if canonical_s == canonical_t:
        return
    differ = [(i, s, t) for i, (s, t) in enumerate(zip(student_names, teacher_names, strict=False))
              if _canonical(s) != _canonical(t)][:5]
    how = "the same classes in another order" if sorted(canonical_s) == sorted(canonical_t) else "different classes"
    raise ValueError(
        f"The student's and the teacher's class names differ ({how}); first differences (index, student, "
        f"teacher): {differ}. The logit loss compares logits index by index, so it would teach wrong classes. "
        "Give the student the teacher's id2label/label2id (and labels in that order), or set logit_loss='none'."
    )


# -- data and batch size ---------------------------------------------------------------------------------------
def check_dataset(dataset: Any, num_classes: int | None, args: Any, split: str = "train") -> None:
    """Non-empty, integer labels within ``[0, num_classes)``, and no per-device batch of 1 under batch norm."""
    if dataset is None:
        return
    try:
        size = len(dataset)
    except TypeError:  # iterable / streaming datasets: nothing to check without reading them
        return
    if size == 0:
        raise ValueError(
            f"The {split} dataset is empty (0 examples). Check the split name, the data path and any filter, select "
            "or max_*_samples applied to it."
        )
    columns = getattr(dataset, "column_names", None) or []
    column = next((name for name in ("labels", *LABEL_COLUMNS) if name in columns), None)
    if column is not None:
        feature = (getattr(dataset, "features", None) or {}).get(column)
        if getattr(feature, "dtype", None) in ("string", "large_string"):
            raise ValueError(
                f"The {split} split's '{column}' column holds strings ({dataset[0][column]!r}, ...): the losses need "
                f"class indices. Encode it first: dataset = dataset.class_encode_column({column!r}) (then "
                "dataset.features[...].names are the class names)."
            )
        if num_classes is not None:
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


def check_batch(inputs: Mapping[str, Any], channels: int | None, needs_labels: bool) -> None:
    """A batch carries float NCHW ``pixel_values`` with the model's channel count, and class-index or soft
    ``labels``; anything else is named, with the fix (shapes and dtypes only: no device sync)."""
    if "pixel_values" not in inputs:
        raise KeyError(
            f"The batch has no 'pixel_values' (its keys: {sorted(inputs)}). Return 'pixel_values' (and 'labels') "
            "from your transform/collator; with load_image_dataset, name the image column with --image_column."
        )
    pixels = inputs["pixel_values"]
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"'pixel_values' must be a tensor, got {type(pixels).__name__}: stack them in your collator.")
    if not pixels.is_floating_point():
        raise TypeError(
            f"'pixel_values' are {pixels.dtype}, expected normalised floats: convert the images with the model's "
            "transform (e.g. ToTensor + Normalize, or an image processor) instead of feeding raw pixel values."
        )
    if pixels.dim() != 4:
        raise ValueError(f"'pixel_values' must be (batch, channels, height, width), got shape {tuple(pixels.shape)}: "
                         "stack the images of a batch with torch.stack (not torch.cat) in your collator.")
    if channels is not None and pixels.shape[1] != channels:
        layout = (" It looks like (batch, height, width, channels): permute to channels-first with "
                  "pixel_values.permute(0, 3, 1, 2)." if pixels.shape[-1] == channels else "")
        grey = (" Grey images: convert them to RGB (image.convert('RGB')) in the transform."
                if pixels.shape[1] == 1 and channels == 3 else "")
        raise ValueError(
            f"'pixel_values' have {pixels.shape[1]} channels (shape {tuple(pixels.shape)}) but the model expects "
            f"{channels}.{layout}{grey}"
        )
    labels = inputs.get("labels")
    if labels is None:
        if needs_labels:
            raise KeyError(
                f"The batch has no 'labels' (its keys: {sorted(inputs)}), which the cross-entropy (and DKD) need. "
                "Return class indices under 'labels' from your transform/collator (a dataset's 'label' column is not "
                "renamed automatically), or set ce_weight=0 with logit_loss='kl'."
            )
        return
    if not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"'labels' must be a tensor of class indices, got {type(labels).__name__} ({labels!r:.60}): return "
            "torch.tensor(labels) from your collator; string labels: encode them first "
            "(dataset.class_encode_column('label'))."
        )
    if labels.dim() == 1 and labels.is_floating_point():
        raise TypeError(f"'labels' of shape {tuple(labels.shape)} are {labels.dtype}: expected integer class indices "
                        "(or (batch, classes) probabilities). Convert them with labels.long().")
    if labels.shape[0] != pixels.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {pixels.shape[0]} images in the batch: expected one label per "
                         "image. Check that your collator stacks the labels of the same examples as the images.")


class CheckedCollator:
    """The data collator, with one failure made readable: images of different shapes in one batch cannot be stacked,
    and the collator's own error (a ``torch.stack`` size message) names neither the images nor the fix.

    Other attributes are the wrapped collator's (``image_mean``, ``teacher``, ...).
    """

    def __init__(self, collator: Callable[[Any], Any]) -> None:
        self.collator = collator

    def __call__(self, features: Any) -> Any:
        try:
            return self.collator(features)
        except (RuntimeError, ValueError, TypeError) as error:
            shapes = _pixel_shapes(features)
            if len(shapes) < 2:
                raise
            raise ValueError(
                f"The images of one batch have different shapes {sorted(shapes)[:4]}: expected one (channels, "
                "height, width) for every 'pixel_values' of a batch, as they are stacked into one tensor. Resize or "
                "crop them to one size in the transform (e.g. Resize + CenterCrop, or RandomResizedCrop), or decode "
                "them with hf_projkd.data.decode_image_dataset(..., image_size=<side>)."
            ) from error

    def __getattr__(self, name: str) -> Any:
        if name == "collator":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.collator, name)


def _pixel_shapes(features: Any) -> set[tuple[int, ...]]:
    if not isinstance(features, (list, tuple)):
        return set()
    shapes = set()
    for item in features:
        value = item.get("pixel_values") if isinstance(item, Mapping) else None
        shape = getattr(value, "shape", None)
        if shape is not None:
            shapes.add(tuple(int(v) for v in shape))
    return shapes


# -- during training -------------------------------------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard:
    """Records, without a device sync per step, whether any loss component was NaN/inf; ``check`` raises.

    The trainer calls ``check`` before every log and checkpoint, so a diverged run stops before it can overwrite
    anything with NaN weights, and the last checkpoint written is the last good one.
    """

    def __init__(self) -> None:
        self._bad: dict[str, torch.Tensor] = {}
        self.checked_step = 0
        self.failed = False

    def observe(self, components: Mapping[str, torch.Tensor | None]) -> None:
        for name, value in components.items():
            if value is None:
                continue
            bad = ~torch.isfinite(value.detach()).all()
            self._bad[name] = bad if name not in self._bad else self._bad[name] | bad

    def check(
        self, step: int, last_good: Callable[[], Any] | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Raise ``NonFiniteLossError`` naming the component(s) if any was NaN/inf since the last check.

        ``reduce`` (a sum over processes) makes every process see the same flags and stop together, instead of one
        raising while the others wait in the next collective.
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
        self.failed = True
        good = last_good() if last_good is not None else None
        parts = [name for name in bad if name != "loss"] or ["loss (the weighted sum; every component was finite)"]
        kept = (f"The last good checkpoint is {good}: resume from it" if good else
                "No complete checkpoint was written before: restart")
        raise NonFiniteLossError(
            f"The training loss must stay finite but became NaN/inf between steps {self.checked_step} and {step}, in "
            f"{', '.join(parts)}. "
            f"Training stopped before writing anything. {kept} after the fix. Usual causes: a learning rate too "
            "high (lower it, set max_grad_norm), fp16 overflow (use bf16), NaN/inf in the inputs, or a large "
            "logsum_exponent with feature_norm='none'."
        )
