"""ImageNet-style data for the recipes: loading (Hub id, parquet or image folder; optionally streamed), timm
train/eval transforms, the collator and DeiT's repeated-augmentation sampler.

Train transforms follow DeiT: bicubic RandomResizedCrop + flip, RandAugment ``rand-m9-mstd0.5-inc1``, random
erasing. Eval transforms resize the shorter side to ``input_size / crop_pct`` and center-crop ``input_size``.
Mixup / CutMix are not here: ``DistillationTrainer`` applies them on the device (``mixup_alpha``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import ClassLabel, Dataset, IterableDataset
from datasets import Image as ImageFeature
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.auto_augment import AugmentOp

from .device_images import read_encoded
from .loading import load_image_dataset, open_image, resolve_columns

INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "hamming", "box")  # timm eval has no "random"
RANDOM_ERASING_MODES = ("pixel", "rand", "const")
_IMAGENET = {"image_mean": IMAGENET_DEFAULT_MEAN, "image_std": IMAGENET_DEFAULT_STD}


@dataclass
class ImageNetDataArguments:
    """Where the images come from and how they are augmented (defaults: DeiT's ImageNet recipe)."""

    dataset_name: str = field(
        default="ILSVRC/imagenet-1k",
        metadata={"help": "Hub dataset id (gated: accept its terms and `hf auth login` first), a local folder of "
                  "<split>-*.parquet files, a .parquet file, or an image folder <split>/<class>/<image>."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str = field(default="validation", metadata={"help": "Split to evaluate on (labelled)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: auto-detected)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: auto-detected)."})
    streaming: bool = field(
        default=False, metadata={"help": "Stream the dataset instead of downloading it (no disk needed; needs "
                                 "max_steps or num_train_examples to size the schedule)."}
    )
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "Shuffle buffer when streaming."})
    num_train_examples: int | None = field(
        default=None, metadata={"help": "Train split size when streaming and the dataset metadata lacks it "
                                "(ImageNet: 1281167)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the train split (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the eval split (debugging)."})
    input_size: int = field(default=224, metadata={"help": "Training and evaluation crop size (pixels)."})
    crop_pct: float = field(default=0.875, metadata={"help": "Eval center-crop ratio: resize to size/crop_pct."})
    interpolation: str = field(default="bicubic", metadata={"help": "Resize interpolation (bicubic, bilinear)."})
    train_scale_min: float = field(default=0.08, metadata={"help": "Lower area bound of RandomResizedCrop."})
    auto_augment: str | None = field(
        default="rand-m9-mstd0.5-inc1", metadata={"help": "timm auto-augment policy; 'none' disables it."}
    )
    color_jitter: float = field(
        default=0.3, metadata={"help": "Colour jitter strength (timm ignores it while a RandAugment policy is set)."}
    )
    reprob: float = field(default=0.25, metadata={"help": "Random erasing probability."})
    remode: str = field(default="pixel", metadata={"help": "Random erasing fill mode (pixel, rand, const)."})
    image_mean: list[float] = field(
        default_factory=lambda: list(IMAGENET_DEFAULT_MEAN), metadata={"help": "Normalisation mean (RGB)."}
    )
    image_std: list[float] = field(
        default_factory=lambda: list(IMAGENET_DEFAULT_STD), metadata={"help": "Normalisation std (RGB)."}
    )
    decode_on_device: bool = field(
        default=False,
        metadata={"help": "Decode (nvJPEG) and augment on the training device instead of in CPU loader workers, "
                  "for GPUs that outrun the CPU cores (hf_projkd.data.device_images; RandAugment is torchvision's)."},
    )

    def __post_init__(self) -> None:
        for name in ("max_train_samples", "max_eval_samples", "num_train_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1 (or left unset for the whole split), got "
                                 f"{getattr(self, name)}.")
        if self.input_size < 1 or not 0 < self.crop_pct <= 1:
            raise ValueError(f"--input_size must be >= 1 and --crop_pct in (0, 1], got {self.input_size} and "
                             f"{self.crop_pct}. DeiT and ResNet evaluate with --input_size 224 --crop_pct 0.875.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"--interpolation {self.interpolation!r} is not supported: expected one of "
                             f"{INTERPOLATIONS}.")
        if self.remode not in RANDOM_ERASING_MODES:
            raise ValueError(f"--remode {self.remode!r} is not supported: expected one of {RANDOM_ERASING_MODES}.")
        if not 0 < self.train_scale_min <= 1:
            raise ValueError(f"--train_scale_min must be in (0, 1] (the smallest crop area, as a fraction of the "
                             f"image), got {self.train_scale_min}. DeiT uses 0.08.")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != 3 or (name == "image_std" and min(values) <= 0):
                raise ValueError(f"--{name} needs 3 values (one per RGB channel{', each > 0' * (name == 'image_std')}"
                                 f"), got {list(values)}. Pass e.g. --{name} {' '.join(map(str, _IMAGENET[name]))}.")


def collate_images(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` (C, H, W) and hard ``labels`` into a batch."""
    return {
        "pixel_values": torch.stack([torch.as_tensor(ex["pixel_values"]) for ex in examples]),
        "labels": torch.as_tensor([int(ex["labels"]) for ex in examples], dtype=torch.long),
    }


def _posterize(image: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize with its 0-bit level kept: Pillow >= 13 refuses ``bits=0``, which older Pillow turned into
    a black image (timm's 'inc1' RandAugment reaches it at its strongest level)."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    from PIL import ImageOps

    return ImageOps.posterize(image, bits_to_keep)


def _with_safe_posterize(transform: Callable) -> Callable:
    for op in _walk(transform):
        if isinstance(op, AugmentOp) and op.name.startswith("Posterize"):
            op.aug_fn = _posterize
    return transform


def _walk(transform: Any, depth: int = 0):
    yield transform
    if depth < 6:
        for child in [*getattr(transform, "transforms", []), *getattr(transform, "ops", [])]:
            yield from _walk(child, depth + 1)


def build_train_transform(args: ImageNetDataArguments) -> Callable:
    """timm's training pipeline: RandomResizedCrop, flip, RandAugment, to tensor, normalise, random erasing."""
    auto_augment = None if args.auto_augment in (None, "", "none") else args.auto_augment
    try:
        transform = create_transform(
            input_size=args.input_size,
            is_training=True,
            scale=(args.train_scale_min, 1.0),
            color_jitter=args.color_jitter,
            auto_augment=auto_augment,
            interpolation=args.interpolation,
            mean=tuple(args.image_mean),
            std=tuple(args.image_std),
            re_prob=args.reprob,
            re_mode=args.remode,
        )
    except (AssertionError, KeyError, ValueError) as error:  # timm parses the policy string with asserts
        raise ValueError(
            f"--auto_augment {args.auto_augment!r} is not a timm augmentation policy ({type(error).__name__}: "
            f"{error}): expected e.g. 'rand-m9-mstd0.5-inc1' (DeiT's RandAugment), 'augmix-m5-w4-d2', 'original', "
            "or 'none' to turn it off."
        ) from error
    return _with_safe_posterize(transform)


def build_eval_transform(args: ImageNetDataArguments) -> Callable:
    """Resize the shorter side to ``input_size / crop_pct``, center-crop ``input_size``, normalise."""
    return create_transform(
        input_size=args.input_size,
        is_training=False,
        crop_pct=args.crop_pct,
        interpolation=args.interpolation,
        mean=tuple(args.image_mean),
        std=tuple(args.image_std),
    )


class RepeatedAugmentationSampler(torch.utils.data.Sampler[int]):
    """DeiT's repeated augmentation, laid out for the ``Trainer`` + accelerate data loader.

    Each epoch: shuffle the N indices (seed + epoch), repeat each ``repeats`` times, and deal the sequence to the
    ``num_processes`` processes as DeiT does (process p takes positions p, p + W, ...), so the copies of one image
    land on different processes at the same step. Each process keeps ``N // W`` indices (rounded down to whole
    batches): an epoch stays N images long. Every process builds the same global order, in which process p's
    k-th batch is global batch ``k * W + p``: the order accelerate's batch sharding reads it in.
    """

    def __init__(self, num_samples: int, batch_size: int, num_processes: int = 1, repeats: int = 3,
                 seed: int = 0) -> None:
        per_process = num_samples // num_processes // batch_size * batch_size
        if per_process == 0:
            raise ValueError(
                f"Repeated augmentation needs at least one full batch per process: {num_samples} samples, "
                f"{num_processes} processes, batch {batch_size}. Use a smaller batch or repeated_augmentation=1."
            )
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}.")
        self.num_samples, self.batch_size, self.num_processes = num_samples, batch_size, num_processes
        self.repeats, self.seed, self.epoch, self.per_process = repeats, seed, 0, per_process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_process * self.num_processes

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).repeat_interleave(self.repeats)
        while len(order) < self.per_process * self.num_processes:  # tiny datasets: wrap around
            order = torch.cat([order, order])
        dealt = [order[p :: self.num_processes][: self.per_process] for p in range(self.num_processes)]
        for start in range(0, self.per_process, self.batch_size):
            for process in range(self.num_processes):
                yield from dealt[process][start : start + self.batch_size].tolist()


@dataclass
class ImageData:
    """The transformed splits, their class names and size (``collate_images`` batches them)."""

    train: Dataset | IterableDataset
    eval: Dataset | IterableDataset
    class_names: list[str]
    num_train_examples: int | None


def load_imagenet(args: ImageNetDataArguments, seed: int = 0) -> ImageData:
    """Load both splits and attach the transforms (lazily: images are decoded and augmented on access)."""
    splits = load_image_dataset(args.dataset_name, streaming=args.streaming)
    for split in (args.train_split, args.eval_split):
        if split not in splits:
            raise ValueError(
                f"Split {split!r} is not in {args.dataset_name!r}, which has {list(splits)}. Set --train_split / "
                "--eval_split to existing splits."
            )
    train, evaluation = splits[args.train_split], splits[args.eval_split]
    image_column, label_column = resolve_columns(train, args.image_column, args.label_column)
    class_names = _class_names(train, label_column)
    num_train = _num_examples(train, args)
    if args.max_train_samples is not None:
        train = _take(train, args.max_train_samples)
        num_train = min(num_train, args.max_train_samples) if num_train else args.max_train_samples
    if args.max_eval_samples is not None:
        evaluation = _take(evaluation, args.max_eval_samples)
    if isinstance(train, IterableDataset):
        train = train.shuffle(seed=seed, buffer_size=args.shuffle_buffer_size)
    if args.decode_on_device:  # DeviceImageCollator decodes and augments
        train = _with_transform(train, _encoded(augment=True), image_column, label_column)
        evaluation = _with_transform(evaluation, _encoded(augment=False), image_column, label_column)
    else:
        train = _with_transform(train, _decoded(build_train_transform(args)), image_column, label_column)
        evaluation = _with_transform(evaluation, _decoded(build_eval_transform(args)), image_column, label_column)
    return ImageData(train, evaluation, class_names, num_train)


def _decoded(transform: Callable) -> Callable[[Any, str], dict[str, Any]]:
    return lambda image, where: {"pixel_values": transform(open_image(image, where))}


def _encoded(augment: bool) -> Callable[[Any, str], dict[str, Any]]:
    return lambda image, where: {"encoded_image": read_encoded(image, where), "augment": augment}


def _class_names(dataset: Dataset | IterableDataset, label_column: str) -> list[str]:
    feature = (dataset.features or {}).get(label_column)
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    raise ValueError(
        f"The label column {label_column!r} is {type(feature).__name__}, not a ClassLabel, so the number of classes "
        "and their names are unknown. Cast it first (dataset.cast_column(label, ClassLabel(names=[...]))) or use "
        "an image folder, whose class folders give the names."
    )


def _num_examples(dataset: Dataset | IterableDataset, args: ImageNetDataArguments) -> int | None:
    if isinstance(dataset, Dataset):
        return len(dataset)
    if args.num_train_examples is not None:
        return args.num_train_examples
    splits = getattr(dataset.info, "splits", None) or {}
    info = splits.get(args.train_split) if hasattr(splits, "get") else None
    return getattr(info, "num_examples", None) or None


def _take(dataset: Dataset | IterableDataset, n: int) -> Dataset | IterableDataset:
    if isinstance(dataset, IterableDataset):
        return dataset.take(n)
    return dataset.select(range(min(n, len(dataset))))


def _with_transform(
    dataset: Dataset | IterableDataset, convert_image: Callable[[Any, str], dict[str, Any]], image_column: str,
    label_column: str,
) -> Dataset | IterableDataset:
    """Apply ``convert_image`` on access: the columns it returns (``pixel_values``, or the encoded image) and
    ``labels``."""

    def convert(batch: dict[str, list]) -> dict[str, list]:
        rows = [convert_image(image, f"{image_column!r} of an example") for image in batch[image_column]]
        columns = {key: [row[key] for row in rows] for key in (rows[0] if rows else {})}
        return {**columns, "labels": list(batch[label_column])}

    if isinstance((dataset.features or {}).get(image_column), ImageFeature):  # decoded here: a bad file is named
        dataset = dataset.cast_column(image_column, ImageFeature(decode=False))
    if isinstance(dataset, IterableDataset):
        # small batches: a streamed map holds a whole batch of decoded, augmented tensors per worker
        return dataset.map(convert, batched=True, batch_size=16, remove_columns=list(dataset.column_names or []))
    return dataset.with_transform(convert)
