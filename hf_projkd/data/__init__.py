"""Datasets for the recipes: loading by Hub id or local path, column resolution, checks and image decoding."""

from .cifar import CifarCollator, CifarTensorDataset, DecodedImages, decode_image_dataset, random_crop_flip
from .imagenet import ImageNetDataArguments, build_eval_transform, build_train_transform, load_imagenet
from .loading import (
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    ImageDecoder,
    UndecodableImageError,
    check_label_range,
    check_splits_not_empty,
    load_image_dataset,
    resolve_columns,
    without_decoding,
)
from .mixup import MixupCollator

__all__ = [
    "CifarCollator",
    "CifarTensorDataset",
    "DecodedImages",
    "decode_image_dataset",
    "random_crop_flip",
    "IMAGE_COLUMNS",
    "LABEL_COLUMNS",
    "ImageDecoder",
    "UndecodableImageError",
    "check_label_range",
    "check_splits_not_empty",
    "load_image_dataset",
    "resolve_columns",
    "without_decoding",
    "ImageNetDataArguments",
    "build_eval_transform",
    "build_train_transform",
    "load_imagenet",
    "MixupCollator",
]
