"""Load an image-classification dataset from a Hub id, a local parquet file/folder or an image folder."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, IterableDatasetDict, load_dataset

IMAGE_COLUMNS = ("image", "img", "pixel_values", "jpg", "png")
LABEL_COLUMNS = ("label", "labels", "fine_label", "cls")
SPLIT_NAMES = ("train", "validation", "test")


def load_image_dataset(source: str, streaming: bool = False) -> DatasetDict | IterableDatasetDict:
    """All splits of ``source``: a Hub id (``uoft-cs/cifar100``), a ``.parquet`` file (split ``train``), a folder
    of ``<split>-*.parquet`` files, or an image folder (``<split>/<class>/<image>``, the ``imagefolder`` layout).
    """
    path = Path(source)
    if path.is_file():
        if path.suffix != ".parquet":
            raise ValueError(f"{source} is a file but not .parquet: pass a parquet file, a folder or a Hub id.")
        return load_dataset("parquet", data_files={"train": str(path)}, streaming=streaming)
    if path.is_dir():
        parquet = {split: sorted(str(p) for p in path.glob(f"**/{split}-*.parquet")) for split in SPLIT_NAMES}
        parquet = {split: files for split, files in parquet.items() if files}
        if parquet:
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
            raise ValueError(f"{flag}={given!r} is not a column of the dataset; its columns are {columns}.")
        return given
    for name in usual:
        if name in columns:
            return name
    raise ValueError(
        f"No {what} column found: looked for {list(usual)}, the dataset has {columns}. Name it with {flag}=<column>."
    )
