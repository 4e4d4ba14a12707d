"""Datasets for the recipes: loading by Hub id or local path, column resolution, transforms and collators."""

from .loading import IMAGE_COLUMNS, LABEL_COLUMNS, load_image_dataset, resolve_columns

__all__ = ["IMAGE_COLUMNS", "LABEL_COLUMNS", "load_image_dataset", "resolve_columns"]
