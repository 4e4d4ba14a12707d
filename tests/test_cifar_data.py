"""The CIFAR pipeline (hf_projkd.data.cifar): exact decoding, crop/flip semantics, collator normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import CIFAR10
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage
from torch.utils.data import DataLoader

from hf_projkd.data.cifar import (
    CifarCollator,
    CifarTensorDataset,
    DecodedImages,
    decode_image_dataset,
    random_crop_flip,
)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_dataset(arrays: list[np.ndarray], labels: list[int]) -> Dataset:
    features = Features({"img": Image(), "label": ClassLabel(num_classes=3)})
    rows = {"img": [{"bytes": _png(a), "path": None} for a in arrays], "label": labels}
    return Dataset.from_dict(rows, features=features)


def test_decode_is_exact_for_lossless_images() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(5)]
    decoded = decode_image_dataset(_image_dataset(arrays, [0, 1, 2, 1, 0]), "img", "label")
    assert decoded.pixels.shape == (5, 3, 8, 8) and decoded.pixels.dtype == torch.uint8
    assert torch.equal(decoded.pixels, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
    assert decoded.labels.tolist() == [0, 1, 2, 1, 0]


def test_decode_mixed_sizes_needs_image_size() -> None:
    arrays = [np.zeros((8, 8, 3), np.uint8), np.full((16, 16, 3), 200, np.uint8)]
    dataset = _image_dataset(arrays, [0, 1])
    with pytest.raises(ValueError, match="image_size"):
        decode_image_dataset(dataset, "img", "label")
    resized = decode_image_dataset(dataset, "img", "label", image_size=8)
    assert resized.pixels.shape == (2, 3, 8, 8)
    assert int(resized.pixels[1].float().mean().round()) == 200


def test_decode_names_missing_columns() -> None:
    dataset = Dataset.from_dict({"x": [1]}, features=Features({"x": Value("int64")}))
    with pytest.raises(ValueError, match="Columns 'img' and 'label'"):
        decode_image_dataset(dataset, "img", "label")


@pytest.mark.parametrize("draws", ["generator", "keys", "keys + gather"])
def test_random_crop_flip_is_a_padded_crop_of_each_image(draws: str) -> None:
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 6, 6), dtype=torch.uint8)
    keys = torch.arange(64) * 7919 if draws != "generator" else None
    out = random_crop_flip(images, padding=2, keys=keys, gather="gather" in draws)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets, flips = set(), 0
    for i in range(len(images)):
        matches = [
            (top, left, flip)
            for top in range(5)
            for left in range(5)
            for flip in (False, True)
            if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, top : top + 6, left : left + 6]))
        ]
        assert matches, f"sample {i} is not a crop of its padded image"
        offsets.add(matches[0][:2])
        flips += matches[0][2]
    assert len(offsets) > 10, "crop offsets should vary across the batch"
    assert 15 < flips < 49, f"about half of 64 images should be flipped, got {flips}"


def test_random_crop_flip_pads_with_zeros_and_identity_without_augmentation() -> None:
    images = torch.full((200, 1, 4, 4), 255, dtype=torch.uint8)
    out = random_crop_flip(images, padding=4, flip=False)
    assert (out == 0).any(), "shifted crops must show the zero padding"
    assert torch.equal(random_crop_flip(images, padding=0, flip=False), images)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_crop_flip(images[0])


def _decoded(n: int = 10) -> DecodedImages:
    g = torch.Generator().manual_seed(0)
    return DecodedImages(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 3)


def test_collator_normalises_for_student_and_teacher() -> None:
    images = _decoded()
    dataset = CifarTensorDataset(images, augment=False)
    collator = CifarCollator((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collator)))
    x = images.pixels[:4].float() / 255
    expected = (x - torch.tensor([0.5, 0.4, 0.3])[:, None, None]) / torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    assert torch.allclose(batch["pixel_values"], expected, atol=1e-6)
    teacher = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[
        :, None, None
    ]
    assert torch.allclose(batch["teacher_pixel_values"], teacher, atol=1e-6)
    assert batch["labels"].tolist() == [0, 1, 2, 0] and batch["labels"].dtype == torch.long


def test_collator_skips_teacher_inputs_when_statistics_match() -> None:
    collator = CifarCollator((0.5,) * 3, (0.2,) * 3, (0.5,) * 3, (0.2,) * 3)
    batch = collator(CifarTensorDataset(_decoded()).__getitems__([0, 1]))
    assert "teacher_pixel_values" not in batch
    with pytest.raises(ValueError, match="both teacher_mean and teacher_std"):
        CifarCollator((0.5,) * 3, (0.2,) * 3, teacher_mean=(0.5,) * 3)


def test_augmentation_is_a_function_of_seed_epoch_and_index_only() -> None:
    """What makes a resumed run replay the augmentations exactly (issue 12.16): no generator state is involved."""
    images = _decoded(32)
    plain = CifarTensorDataset(images, augment=False)
    assert torch.equal(plain[3]["pixel_values"], images.pixels[3])
    augmented = CifarTensorDataset(images, augment=True, padding=2, seed=5)

    def fetch(indices: list[int]) -> torch.Tensor:
        return torch.stack([s["pixel_values"] for s in augmented.__getitems__(indices)])

    first = fetch(list(range(32)))
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(fetch(list(range(32))), first) and not torch.equal(first, images.pixels)
    assert torch.equal(fetch([7, 3]), first[[7, 3]])  # batch composition and order play no part either
    augmented.set_epoch(1)
    assert not torch.equal(fetch(list(range(32))), first)  # a new epoch draws new crops
    augmented.set_epoch(0)
    augmented.seed = 6
    assert not torch.equal(fetch(list(range(32))), first)  # and so does another seed


@pytest.mark.skipif(not CIFAR10.is_dir(), reason="needs ../shared/data/cifar10-jpeg")
def test_decode_shared_cifar10_subset() -> None:
    from hf_projkd.data.loading import load_image_dataset

    test = load_image_dataset(str(CIFAR10))["test"].select(range(64))
    decoded = decode_image_dataset(test, "img", "label")
    assert decoded.pixels.shape == (64, 3, 32, 32)
    assert decoded.labels.tolist() == test["label"]
    assert 60 < decoded.pixels.float().mean() < 200  # real photos, not blank
