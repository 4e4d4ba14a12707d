"""Datasets for the recipes: loading by Hub id or local path with checks, the decode-once CIFAR pipeline, and the
ImageNet-style timm transforms."""

from .cifar import CifarCollator, CifarTensorDataset, DecodedImages, decode_image_dataset, random_crop_flip
from .imagenet import (
    ImageNetDataArguments,
    RepeatedAugmentationSampler,
    build_eval_transform,
    build_train_transform,
    collate_images,
    load_imagenet,
)
from .loading import (
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    check_label_range,
    check_splits_not_empty,
    load_image_dataset,
    resolve_columns,
)

__all__ = [
    "IMAGE_COLUMNS",
    "LABEL_COLUMNS",
    "CifarCollator",
    "CifarTensorDataset",
    "DecodedImages",
    "ImageNetDataArguments",
    "RepeatedAugmentationSampler",
    "build_eval_transform",
    "build_train_transform",
    "check_label_range",
    "check_splits_not_empty",
    "collate_images",
    "decode_image_dataset",
    "load_image_dataset",
    "load_imagenet",
    "random_crop_flip",
    "resolve_columns",
]
