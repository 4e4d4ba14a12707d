"""A CIFAR input pipeline that is not the bottleneck on a CPU: decode once, augment batches as tensor ops.

Decoding 32x32 JPEG/PNG bytes through PIL for every sample of every epoch costs more than a small CIFAR
network's training step. Here the images are decoded ONCE into a uint8 (N, 3, H, W) tensor; the CRD training
augmentation (random crop 32 with zero padding 4, horizontal flip) then runs on whole batches with tensor
indexing, and the collator turns uint8 into normalised floats. ``benchmarks/cifar_loader_speed.py`` measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage
from torch.utils.data import Dataset as TorchDataset

from .loading import open_image


@dataclass
class DecodedImages:
    """Decoded images ``pixels`` (N, C, H, W) uint8 and their class indices ``labels`` (N,) int64."""

    pixels: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> DecodedImages:
        return DecodedImages(self.pixels.to(device), self.labels.to(device))


def decode_image_dataset(
    dataset: Dataset, image_column: str, label_column: str, image_size: int | None = None
) -> DecodedImages:
    """Decode every image of ``dataset`` once into a uint8 tensor (RGB; resized to ``image_size`` if given).

    Images of different sizes need ``image_size``; CIFAR's are all 32x32 and are kept as they are.
    """
    if image_column not in dataset.column_names or label_column not in dataset.column_names:
        raise ValueError(
            f"Columns {image_column!r} and {label_column!r} are needed, the dataset has {dataset.column_names}. "
            "Pass the right names (see hf_projkd.data.resolve_columns)."
        )
    raw = dataset.cast_column(image_column, Image(decode=False)).with_format(None)
    arrays = [_decode(item, image_size, row) for row, item in enumerate(raw[image_column])]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"The images have different sizes {sorted(shapes)[:4]}: pass image_size=<side> to resize them all."
        )
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(np.asarray(raw[label_column]), dtype=torch.long)
    return DecodedImages(pixels, labels)


def _decode(item: dict | PILImage.Image, image_size: int | None, row: int) -> np.ndarray:
    image = open_image(item, f"row {row}")
    if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), PILImage.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors: the low 32 bits of each product are exact."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def keyed_integers(keys: torch.Tensor, stream: int, high: int) -> torch.Tensor:
    """Pseudo-random integers in ``[0, high)``, a pure function of ``(keys, stream)``: no generator state."""
    return _mix32((keys & _MASK32) ^ _mix32(torch.full_like(keys, stream & _MASK32))) % high


def random_crop_flip(
    pixels: torch.Tensor, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None,
    keys: torch.Tensor | None = None, gather: bool | None = None,
) -> torch.Tensor:
    """Random crop of the input size from the zero-padded batch, then a random horizontal flip, per sample.

    ``pixels`` is (B, C, H, W) of any dtype, on any device; the result has the same shape and dtype. Equivalent to
    torchvision's ``RandomCrop(H, padding=padding)`` + ``RandomHorizontalFlip()`` applied image by image. The draws
    come from ``generator`` (or torch's global one), or, with ``keys`` (one int64 per sample), are a pure function
    of the keys: the same key always gives the same crop and flip. ``gather`` (default: off on the CPU) crops with
    one indexing op instead of a slice per sample, the fast way on a GPU.
    """
    if pixels.dim() != 4:
        raise ValueError(f"random_crop_flip expects a (B, C, H, W) batch, got shape {tuple(pixels.shape)}: for one "
                         "image, pass pixels.unsqueeze(0).")
    batch, _, height, width = pixels.shape
    if keys is not None:
        keys = keys.to(pixels.device, torch.int64)
        top, left = keyed_integers(keys, 1, 2 * padding + 1), keyed_integers(keys, 2, 2 * padding + 1)
        flipped = keyed_integers(keys, 3, 2).bool()
    else:
        top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
        left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
        flipped = torch.rand(batch, generator=generator) < 0.5
    if padding > 0:
        padded = torch.nn.functional.pad(pixels, (padding, padding, padding, padding))
        if not (pixels.device.type != "cpu" if gather is None else gather):  # ~10x faster than gather on a CPU
            offsets = zip(top.tolist(), left.tolist(), strict=True)
            pixels = torch.stack([padded[i, :, t : t + height, s : s + width] for i, (t, s) in enumerate(offsets)])
        else:  # one gather on the device, no host sync
            top, left = top.to(pixels.device), left.to(pixels.device)
            rows = (top[:, None] + torch.arange(height, device=pixels.device))[:, None, :, None]
            cols = (left[:, None] + torch.arange(width, device=pixels.device))[:, None, None, :]
            samples = torch.arange(batch, device=pixels.device)[:, None, None, None]
            channels = torch.arange(pixels.shape[1], device=pixels.device)[None, :, None, None]
            pixels = padded[samples, channels, rows, cols]
    if flip:
        pixels = torch.where(flipped.to(pixels.device)[:, None, None, None], pixels.flip(-1), pixels)
    return pixels


class CifarTensorDataset(TorchDataset):
    """Decoded images as a map-style dataset of ``{"pixel_values": uint8 (C, H, W), "labels": int}``.

    With ``augment=True`` every fetched batch is randomly cropped and flipped in one tensor operation
    (``__getitems__``, which the ``DataLoader`` calls with the batch's indices); single items also work. The crop
    and flip of an image are a pure function of ``(seed, epoch, index)`` (``set_epoch`` is called by the Trainer's
    data loader each epoch), so a resumed run replays exactly the augmentations of an uninterrupted one, whatever
    was prefetched or skipped.

    ``shuffle=True`` makes the dataset itself shuffle, by a permutation of ``(seed, epoch)``: used with the
    Trainer's sequential sampler, batches are contiguous index ranges, which a dataset held on the GPU turns into
    its images with one slice, no host-to-device copy. ``batched`` (default: when the images are not on the CPU)
    returns each batch as one dict of stacked tensors, which ``CifarCollator`` normalises on the same device: the
    fast path of the CRD protocol on a GPU, with no per-sample host work.
    """

    def __init__(self, images: DecodedImages, augment: bool = False, padding: int = 4, flip: bool = True,
                 seed: int = 0, shuffle: bool = False, batched: bool | None = None) -> None:
        self.images = images
        self.augment = augment
        self.padding = padding
        self.flip = flip
        self.seed = seed
        self.shuffle = shuffle
        self.batched = images.pixels.device.type != "cpu" if batched is None else batched
        self.epoch = 0
        self._order: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._order = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self._items(self._index([index]))[0]

    def augmentation_keys(self, index: torch.Tensor) -> torch.Tensor:
        """One key per sample from (seed, epoch, index), so draws differ across epochs and seeds."""
        stream = ((self.seed * 0x9E3779B1) ^ (self.epoch * 0x85EBCA77)) & _MASK32
        return _mix32(torch.full_like(index, stream)) ^ index

    def order(self) -> torch.Tensor:
        """This epoch's permutation of the images (``shuffle``), on their device; made once per epoch."""
        if self._order is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order = torch.randperm(len(self), generator=generator).to(self.images.pixels.device)
        return self._order

    def _index(self, positions: Sequence[int]) -> torch.Tensor:
        """The image indices at ``positions``: a slice of the epoch's order (or of an arange) when the positions are
        a contiguous range, as the sequential sampler gives, so that nothing is copied from the host."""
        device = self.images.pixels.device
        first, count = int(positions[0]), len(positions)
        if list(positions) == list(range(first, first + count)):
            if self.shuffle:
                return self.order()[first:first + count]
            return torch.arange(first, first + count, device=device)
        index = torch.as_tensor(list(positions), dtype=torch.long).to(device)
        return self.order()[index] if self.shuffle else index

    def __getitems__(self, positions: Sequence[int]) -> list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]:
        index = self._index(positions)
        pixels = self.images.pixels[index]
        if self.augment:
            pixels = random_crop_flip(pixels, self.padding, self.flip, keys=self.augmentation_keys(index),
                                      gather=self.batched)
        labels = self.images.labels[index]
        if self.batched:
            return {"pixel_values": pixels, "labels": labels}
        return [{"pixel_values": p, "labels": y} for p, y in zip(pixels, labels, strict=True)]

    def _items(self, index: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        batch = self.__getitems__(index.tolist())
        if isinstance(batch, dict):
            return [{"pixel_values": batch["pixel_values"][0], "labels": batch["labels"][0]}]
        return batch


class CifarCollator:
    """Stacks uint8 images and normalises them: ``(x / 255 - mean) / std`` as float32 ``pixel_values``.

    When the teacher was trained with other statistics (e.g. the shared CIFAR-10 ResNets use ImageNet's), pass
    ``teacher_mean``/``teacher_std``: the batch then also carries ``teacher_pixel_values``, the SAME augmented
    images normalised the teacher's way, which ``DistillationTrainer`` feeds to the teacher. Other tensor keys of
    the items (cached ``teacher_logits`` / ``teacher_features``) are stacked as they are.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        teacher_mean: Sequence[float] | None = None,
        teacher_std: Sequence[float] | None = None,
    ) -> None:
        self.mean, self.std = _channel_stat(mean), _channel_stat(std)
        if (teacher_mean is None) != (teacher_std is None):
            given, missing = ("teacher_mean", "teacher_std") if teacher_std is None else ("teacher_std", "teacher_mean")
            raise ValueError(f"Got {given} without {missing}: the teacher's normalisation needs both. Pass both "
                             "teacher_mean and teacher_std, or neither.")
        self.teacher = None
        if teacher_mean is not None and (list(teacher_mean) != list(mean) or list(teacher_std) != list(std)):
            self.teacher = (_channel_stat(teacher_mean), _channel_stat(teacher_std))
        self._on_device: dict[torch.device, tuple] = {}

    def __call__(self, features: list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Items (a list of dicts), or a batch already stacked on its device (``CifarTensorDataset(batched=True)``)."""
        if isinstance(features, dict):
            stacked = dict(features)
        else:
            stacked = {key: torch.stack([torch.as_tensor(f[key]) for f in features]) for key in features[0]}
        pixels = stacked.pop("pixel_values").float().div_(255.0)
        mean, std, teacher = self._statistics(pixels.device)
        batch = {"pixel_values": (pixels - mean) / std, "labels": stacked.pop("labels").long()}
        if teacher is not None:
            batch["teacher_pixel_values"] = (pixels - teacher[0]) / teacher[1]
        batch.update(stacked)  # e.g. cached teacher_logits / teacher_features, as they are
        return batch

    def _statistics(self, device: torch.device) -> tuple:
        """The statistics on ``device``, copied there once (a copy per batch would sync the GPU each step)."""
        if device not in self._on_device:
            moved = [t.to(device) for t in (self.mean, self.std, *(self.teacher or ()))]
            self._on_device[device] = (moved[0], moved[1], tuple(moved[2:]) if self.teacher else None)
        return self._on_device[device]


def _channel_stat(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32)[:, None, None]


@dataclass
class DecodedSplits:
    """Decoded train and eval images of one dataset, and its class names (in label order)."""

    train: DecodedImages
    eval: DecodedImages
    class_names: list[str]


def load_decoded_splits(
    source: str,
    train_split: str = "train",
    eval_split: str = "test",
    image_column: str | None = None,
    label_column: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    image_size: int | None = None,
) -> DecodedSplits:
    """Load two splits of ``source`` (Hub id, parquet or image folder), take the subsets (a fixed random train
    subset, seed 0; the first eval images) and decode them once."""
    from datasets import ClassLabel

    from .loading import load_image_dataset, resolve_columns

    splits = load_image_dataset(source)
    for split in (train_split, eval_split):
        if split not in splits:
            raise ValueError(f"{source} has no split {split!r} (it has {list(splits)}): pass --train_split / "
                             "--eval_split.")
    train, evaluation = splits[train_split], splits[eval_split]
    image_column, label_column = resolve_columns(train, image_column, label_column)
    feature = train.features.get(label_column)
    if not isinstance(feature, ClassLabel):
        raise ValueError(
            f"The label column {label_column!r} of {source} is {type(feature).__name__}, not a ClassLabel: the class "
            "names and their order are unknown. Cast it (dataset.class_encode_column / cast_column(..., ClassLabel("
            "names=[...]))) or use an image folder, whose class folders give the names."
        )
    if max_train_samples is not None and max_train_samples < len(train):
        train = train.shuffle(seed=0).select(range(max_train_samples))
    if max_eval_samples is not None and max_eval_samples < len(evaluation):
        evaluation = evaluation.select(range(max_eval_samples))
    decoded_train = decode_image_dataset(train, image_column, label_column, image_size)
    decoded_eval = decode_image_dataset(evaluation, image_column, label_column, image_size)
    return DecodedSplits(decoded_train, decoded_eval, list(feature.names))
