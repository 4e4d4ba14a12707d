"""Tiny random-initialised models and data shared by the tests (no network, seconds on a CPU)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import ViTConfig, ViTForImageClassification  # noqa: E402

NUM_CLASSES = 5
IMAGE_SIZE = 32

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))  # the recipes are scripts; tests import them as modules (cifar, ...)

# Data and teachers in ../shared (beside the repository); tests that need them skip where they are absent.
SHARED = ROOT.parent / "shared"
CIFAR10 = SHARED / "data" / "cifar10-jpeg"
RESNET20 = SHARED / "weights" / "cifar10-resnet" / "cifar10_resnet20.safetensors"
RESNET56 = SHARED / "weights" / "cifar10-resnet" / "cifar10_resnet56.safetensors"
needs_shared = pytest.mark.skipif(
    not (CIFAR10.is_dir() and RESNET20.is_file()), reason="needs ../shared CIFAR-10 data and ResNet20 weights"
)


def tiny_vit(num_labels: int = NUM_CLASSES, seed: int = 0) -> ViTForImageClassification:
    """A 2-layer transformers ViT without dropout or batch norm (so gradients do not depend on batch split)."""
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return ViTForImageClassification(config)


def tiny_timm_resnet(num_classes: int = NUM_CLASSES, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=num_classes, pretrained=False)


def random_image_dataset(n: int = 32, num_classes: int = NUM_CLASSES, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset.from_dict(
        {
            "pixel_values": torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g).numpy(),
            "labels": torch.randint(0, num_classes, (n,), generator=g).numpy(),
        }
    ).with_format("torch")


class EpochRecordingImages(torch.utils.data.Dataset):
    """Random images that record the epochs they are told (the CIFAR pipeline draws its order and crops from them)."""

    def __init__(self, n: int = 16) -> None:
        self.data, self.epochs = random_image_dataset(n), []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        return self.data[index]


@pytest.fixture
def tiny_dataset() -> Dataset:
    return random_image_dataset()


def tiny_timm_vit(num_classes: int = NUM_CLASSES, seed: int = 2) -> torch.nn.Module:
    """A small timm ViT teacher with 48-d features (the student's are 32-d, so the projector maps 32 -> 48)."""
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", num_classes=num_classes, img_size=IMAGE_SIZE, patch_size=8, depth=2,
        embed_dim=48, num_heads=2, pretrained=False,
    )


def make_args(output_dir, **overrides):
    from hf_projkd import DistillationArguments

    values = dict(
        output_dir=str(output_dir), use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, seed=0, per_device_train_batch_size=8, per_device_eval_batch_size=16,
        learning_rate=1e-3, max_steps=2,
    )
    values.update(overrides)
    return DistillationArguments(**values)
