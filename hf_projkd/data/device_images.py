"""Decode and augment ImageNet-style batches on the training device (``--decode_on_device true``).

Why: a DeiT-Ti step on one GPU eats ~2,000-2,600 images/s, while PIL decoding plus timm's augmentations give
~100 images/s per CPU core (``benchmarks/imagenet_loader_speed.py``), more cores than a GPU machine has per GPU.
On this path the loader only reads the encoded bytes; the collator decodes them with ``torchvision.io.decode_jpeg``
(nvJPEG on a CUDA device, batched) and runs DeiT's train view per image on the device: RandomResizedCrop + flip,
RandAugment, normalisation, random erasing. RandAugment is torchvision's (timm's runs on PIL images only), with
timm's magnitude scale (0-10) and fill; timm's magnitude noise (``mstd``) and increasing-severity ops (``inc1``)
have no torchvision equivalent, which a WARNING says. Eval views match ``build_eval_transform`` to resampling
rounding.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as F
from timm.data.random_erasing import RandomErasing
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import ColorJitter, InterpolationMode, RandAugment

logger = logging.getLogger(__name__)

DEVICE_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                         "nearest": InterpolationMode.NEAREST}
_RAND_POLICY = re.compile(r"rand(-[a-z]+[\d.]+)*")


def read_encoded(item: Any, where: str) -> torch.Tensor:
    """The encoded bytes of a ``datasets`` Image cell (``{'bytes', 'path'}``) as a 1-d uint8 tensor."""
    data = item.get("bytes") if isinstance(item, dict) else None
    path = item.get("path") if isinstance(item, dict) else None
    if data is None and path:
        data = Path(path).read_bytes()
    if not data:
        raise ValueError(f"No encoded image bytes or path at {where} ({item!r:.80}): decode_on_device reads the "
                         "image files themselves; pass a dataset whose image column holds image files or bytes.")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _device_augment(args: Any) -> RandAugment | ColorJitter | None:
    """torchvision's analogue of ``args.auto_augment`` (``rand-m{M}-n{N}``), or colour jitter when there is none."""
    policy = args.auto_augment
    if policy in (None, "", "none"):
        jitter = args.color_jitter
        return ColorJitter(jitter, jitter, jitter) if jitter else None
    if not _RAND_POLICY.fullmatch(policy):
        raise ValueError(f"--auto_augment {policy!r} cannot run with --decode_on_device true: the device path has "
                         "RandAugment only. Pass 'rand-m<magnitude>-n<ops>' (e.g. DeiT's rand-m9-mstd0.5-inc1) or "
                         "'none', or decode on the CPU (--decode_on_device false).")
    settings = dict(re.findall(r"-([a-z]+)([\d.]+)", policy))
    approximated = {key: value for key, value in settings.items() if key not in ("m", "n")}
    if approximated:
        logger.warning(
            "--decode_on_device: RandAugment %r runs as torchvision's RandAugment(num_ops=%s, magnitude=%s of 10); "
            "its %s settings have no torchvision equivalent and are not applied. Use --decode_on_device false for "
            "timm's exact policy.", policy, settings.get("n", "2"), settings.get("m", "10"), approximated)
    fill = [round(255 * m) for m in args.image_mean]
    return RandAugment(num_ops=int(settings.get("n", 2)), magnitude=min(int(float(settings.get("m", 10))), 10),
                       num_magnitude_bins=11, fill=fill)


class DeviceImageCollator:
    """Batches of ``{"encoded_image", "labels", "augment"}`` examples (``load_imagenet`` with
    ``decode_on_device``) to normalised ``pixel_values`` on ``device``: DeiT's train view where ``augment`` is set,
    else the eval view (resize the shorter side to ``input_size / crop_pct``, center crop). It runs in the main
    process (``dataloader_num_workers=0``): the device work is queued asynchronously behind the running step."""

    def __init__(self, args: Any, device: torch.device | str) -> None:
        if args.interpolation not in DEVICE_INTERPOLATIONS:
            raise ValueError(f"--interpolation {args.interpolation!r} cannot run with --decode_on_device true: "
                             f"expected one of {sorted(DEVICE_INTERPOLATIONS)}.")
        self.device, self.size = torch.device(device), args.input_size
        self.resize = math.floor(args.input_size / args.crop_pct)
        self.interpolation = DEVICE_INTERPOLATIONS[args.interpolation]
        self.scale, self.ratio = (args.train_scale_min, 1.0), (3 / 4, 4 / 3)
        self.augment = _device_augment(args)
        self.erase = RandomErasing(args.reprob, mode=args.remode, device=self.device) if args.reprob > 0 else None
        self.image_mean, self.image_std = list(args.image_mean), list(args.image_std)  # what the trainer reads
        self._mean = torch.tensor(self.image_mean, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(self.image_std, device=self.device).view(1, 3, 1, 1) * 255

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = self.decode([example["encoded_image"] for example in examples])
        views = [self.train_view(image) if example["augment"] else self.eval_view(image)
                 for image, example in zip(images, examples, strict=True)]
        pixels = (torch.stack(views).float() - self._mean) / self._std
        if self.erase is not None and examples[0]["augment"]:
            pixels = self.erase(pixels)
        labels = torch.as_tensor([int(example["labels"]) for example in examples], dtype=torch.long)
        return {"pixel_values": pixels, "labels": labels.to(self.device)}

    def decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor]:
        """RGB uint8 (3, H, W) images on the device: JPEGs in one batched call, anything else one by one."""
        images: list[torch.Tensor | None] = [None] * len(encoded)
        jpeg_rows = [row for row, data in enumerate(encoded) if data[:2].tolist() == [0xFF, 0xD8]]  # SOI marker
        try:
            decoded = decode_jpeg([encoded[row] for row in jpeg_rows], mode=ImageReadMode.RGB,
                                  device=self.device) if jpeg_rows else []
            for row, image in zip(jpeg_rows, decoded, strict=True):
                images[row] = image
        except RuntimeError:  # a JPEG nvJPEG refuses (e.g. CMYK) fails the whole call: decode one by one below
            pass
        for row, image in enumerate(images):
            if image is None:
                images[row] = self._decode_one(encoded[row], row)
        return images  # type: ignore[return-value]

    def _decode_one(self, data: torch.Tensor, row: int) -> torch.Tensor:
        try:
            return decode_image(data, mode=ImageReadMode.RGB).to(self.device, non_blocking=True)
        except RuntimeError as error:
            raise ValueError(
                f"Image {row} of the batch cannot be decoded ({error}): expected a JPEG, PNG, GIF or WebP file. "
                "Remove or re-encode it (e.g. dataset.filter(...) without that row), then retry."
            ) from error

    def train_view(self, image: torch.Tensor) -> torch.Tensor:
        """RandomResizedCrop to ``input_size``, horizontal flip (p=0.5), then RandAugment / colour jitter."""
        top, left, height, width = RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        view = F.resized_crop(image, top, left, height, width, [self.size, self.size], self.interpolation,
                              antialias=True)
        if torch.rand(()) < 0.5:
            view = F.horizontal_flip(view)
        return self.augment(view) if self.augment is not None else view

    def eval_view(self, image: torch.Tensor) -> torch.Tensor:
        view = F.resize(image, [self.resize], self.interpolation, antialias=True)
        return F.center_crop(view, [self.size, self.size])
