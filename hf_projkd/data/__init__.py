"""Datasets for the recipes: loading by Hub id or local path, column resolution, transforms and collators."""

from .cifar import CifarCollator, CifarTensorDataset, DecodedImages, decode_image_dataset, random_crop_flip
from .loading import IMAGE_COLUMNS, LABEL_COLUMNS, load_image_dataset, resolve_columns

__all__ = [
    "CifarCollator",
    "CifarTensorDataset",
    "DecodedImages",
    "IMAGE_COLUMNS",
    "LABEL_COLUMNS",
    "decode_image_dataset",
    "load_image_dataset",
    "random_crop_flip",
    "resolve_columns",
]
