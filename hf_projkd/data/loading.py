"""Load an image-classification dataset from a Hub id, a local parquet file/folder or an image folder, and check
its splits, columns and labels."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, IterableDatasetDict, load_dataset
from PIL import Image as PILImage

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "pixel_values", "jpg", "png")
LABEL_COLUMNS = ("label", "labels", "fine_label", "cls")
SPLIT_NAMES = ("train", "validation", "test")


def load_image_dataset(source: str, streaming: bool = False) -> DatasetDict | IterableDatasetDict:
    """All splits of ``source``: a Hub id (``uoft-cs/cifar100``), a ``.parquet`` file (split ``train``), a folder
    of ``<split>-*.parquet`` files, or an image folder (``<split>/<class>/<image>``, the ``imagefolder`` layout).
    """
    try:
        dataset = _load_splits(source, streaming)
    except ValueError as error:  # datasets' own words for an empty split: 'Instruction "test" corresponds to no data!'
        empty = re.search(r'Instruction "(.+?)" corresponds to no data', str(error))
        if empty is None:
            raise
        raise ValueError(
            f"{source}: split(s) {[empty.group(1)]} are empty ({error}). Check the files/folders of that split, or "
            "remove them."
        ) from error
    if not streaming:
        check_splits_not_empty(dataset, source)
    return dataset


def _load_splits(source: str, streaming: bool) -> DatasetDict | IterableDatasetDict:
    path = Path(source)
    if path.is_file():
        if path.suffix != ".parquet":
            raise ValueError(f"{source} is a file but not .parquet: pass a parquet file, a folder or a Hub id.")
        return load_dataset("parquet", data_files={"train": str(path)}, streaming=streaming)
    if path.is_dir():
        parquet = {split: sorted(str(p) for p in path.glob(f"**/{split}-*.parquet")) for split in SPLIT_NAMES}
        parquet = {split: files for split, files in parquet.items() if files}
        if parquet:
            check_parquet_class_names([f for files in parquet.values() for f in files])
            return load_dataset("parquet", data_files=parquet, streaming=streaming)
        return load_dataset("imagefolder", data_dir=str(path), streaming=streaming)
    try:
        return load_dataset(source, streaming=streaming)
    except Exception as error:
        raise OSError(
            f"Could not load the dataset {source!r} ({type(error).__name__}: {error}). Expected a Hub id such as "
            "'uoft-cs/cifar100' (needs network access or the local datasets cache), a .parquet file, a folder of "
            "'<split>-*.parquet' files, or an image folder laid out as <split>/<class>/<image>."
        ) from error


def resolve_columns(
    dataset: Dataset, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str]:
    """The image and label column names: the ones given, else the first usual name present."""
    columns = list(dataset.column_names or [])
    return (
        _pick(columns, image_column, IMAGE_COLUMNS, "image", "--image_column"),
        _pick(columns, label_column, LABEL_COLUMNS, "label", "--label_column"),
    )


def _pick(columns: list[str], given: str | None, usual: tuple[str, ...], what: str, flag: str) -> str:
    if given is not None:
        if given not in columns:
            raise ValueError(f"{flag}={given!r} is not a column of the dataset; its columns are {columns}. Pass one "
                             f"of them with {flag}=<column>.")
        return given
    for name in usual:
        if name in columns:
            return name
    raise ValueError(
        f"No {what} column found: looked for {list(usual)}, the dataset has {columns}. Name it with {flag}=<column>."
    )


def open_image(item: Any, where: str) -> PILImage.Image:
    """An RGB image from a ``datasets`` Image cell (a PIL image, or undecoded ``{'bytes', 'path'}``).

    An image PIL cannot read is an error naming it and the fix, instead of PIL's "cannot identify image file
    <_io.BytesIO ...>" from deep inside a data loader.
    """
    if isinstance(item, PILImage.Image):
        return item.convert("RGB")
    path = item.get("path") if isinstance(item, dict) else None
    try:
        if isinstance(item, dict) and item.get("bytes") is not None:
            image = PILImage.open(io.BytesIO(item["bytes"]))
        elif path:
            image = PILImage.open(path)
        else:
            raise ValueError(f"no image bytes or path in {item!r:.80}")
        return image.convert("RGB")  # decodes fully: a truncated file fails here
    except (OSError, ValueError, SyntaxError) as error:  # PIL.UnidentifiedImageError is an OSError
        name = f"{where} ({path})" if path else where
        raise ValueError(
            f"The image at {name} cannot be decoded ({type(error).__name__}: {error}): expected an image PIL can "
            "read (JPEG, PNG, ...). Remove or re-encode it (e.g. dataset.filter(...) without that row), then retry."
        ) from error


# -- data checks -------------------------------------------------------------------------------------------------
def _parquet_class_names(path: str) -> dict[str, list[str]]:
    """The ClassLabel names each column of a parquet file written by ``datasets`` records in its schema."""
    metadata = pq.read_schema(path).metadata or {}
    try:
        features = json.loads(metadata.get(b"huggingface", b"{}")).get("info", {}).get("features", {})
    except ValueError:
        return {}
    return {column: list(feature["names"]) for column, feature in features.items()
            if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and "names" in feature}


def check_parquet_class_names(files: list[str]) -> None:
    """Every parquet file must name the classes of a label column alike: ``datasets`` reads all splits with the
    FIRST file's names, so a split exported with another order would silently mean other classes."""
    seen: dict[str, tuple[str, list[str]]] = {}
    for path in files:
        for column, names in _parquet_class_names(path).items():
            first, first_names = seen.setdefault(column, (path, names))
            if names != first_names:
                differ = [(i, a, b) for i, (a, b) in enumerate(zip(first_names, names, strict=False)) if a != b][:3]
                raise ValueError(
                    f"The parquet files name the classes of {column!r} differently: {first} has {len(first_names)} "
                    f"classes, {path} {len(names)}; first differences (index, {Path(first).name}, {Path(path).name}):"
                    f" {differ}. Expected the same ClassLabel names in every file, since every split is read with "
                    "the first file's names. Re-export the splits with one ClassLabel (dataset.cast_column(column, "
                    "ClassLabel(names=[...])) after remapping the labels), then retry."
                )


def check_splits_not_empty(dataset: DatasetDict, source: str = "the dataset") -> None:
    """Every split must hold examples: an empty one means a wrong path, split name or filter, not a tiny run."""
    if not dataset:
        raise ValueError(f"{source} has no splits: expected at least a 'train' split.")
    empty = [split for split, data in dataset.items() if len(data) == 0]
    if empty:
        sizes = {split: len(data) for split, data in dataset.items()}
        raise ValueError(
            f"{source}: split(s) {empty} are empty (sizes: {sizes}). Check the files/folders of those splits, or "
            "the filter/select applied to them."
        )


def check_label_range(dataset: Dataset, num_labels: int, label_column: str = "label", split: str = "train") -> None:
    """Hard labels must be class indices in ``[0, num_labels)``; soft (2-d) labels are left alone.

    Reads only the label column (Arrow), so it costs well under a second even for ImageNet's 1.28M rows.
    """
    column = dataset.data.column(label_column)
    indices = getattr(dataset, "_indices", None)  # select/shuffle/filter views: take their rows in C++, not Python
    if indices is not None:
        column = pc.take(column, indices.column(0))
    if not (pa.types.is_integer(column.type) and column.null_count == 0):
        return  # soft (list) labels, strings or missing values: nothing to range-check
    labels = column.to_numpy()
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        return
    low, high = int(labels.min()), int(labels.max())
    if low >= 0 and high < num_labels:
        return
    bad = np.flatnonzero((labels < 0) | (labels >= num_labels))
    hint = (" Labels of -1 usually mark an unlabelled split (e.g. a test split): train and evaluate on labelled "
            "splits." if low < 0 else "")
    raise ValueError(
        f"The {split} split's '{label_column}' column has labels in [{low}, {high}], but the model has "
        f"{num_labels} classes (valid labels 0..{num_labels - 1}); {bad.size} example(s) are out of range, first "
        f"at rows {bad[:5].tolist()}.{hint} Build the student with num_labels={high + 1} if the data has that many "
        "classes, or fix/remap the labels."
    )
