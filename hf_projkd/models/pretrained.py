"""Loaders for third-party CIFAR checkpoints into :class:`CifarNetForImageClassification`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .configuration_cifar import CifarNetConfig
from .modeling_cifar import CifarNetForImageClassification

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: Normalisation the classic CIFAR-10 ResNets (Idelbayev) were trained with (ImageNet statistics).
CIFAR10_RESNET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
CIFAR10_RESNET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_STAGE_WIDTHS = (16, 32, 64)
_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.")


def _blocks_per_stage(keys: list[str], source: Path) -> int:
    """Count the basic blocks in each of ``layer1..3`` and check that the stages agree (6n+2 ResNet)."""
    counts: dict[int, set[int]] = {}
    for key in keys:
        match = _BLOCK_KEY.match(key)
        if match:
            counts.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    per_stage = {stage: max(ids) + 1 for stage, ids in counts.items()}
    if sorted(per_stage) != [1, 2, 3] or len(set(per_stage.values())) != 1:
        raise ValueError(
            f"{source} does not look like a CIFAR ResNet (6n+2) checkpoint: expected keys layer1..layer3 "
            f"with the same number of blocks each, found blocks per stage {per_stage}."
        )
    return per_stage[1]


def _check_widths(state: dict[str, torch.Tensor], source: Path) -> None:
    """Fail early, with a clear message, on checkpoints whose widths are not 16/32/64."""
    found = tuple(int(state[f"layer{i}.0.conv1.weight"].shape[0]) for i in (1, 2, 3))
    if found != _STAGE_WIDTHS or state["conv1.weight"].shape[0] != _STAGE_WIDTHS[0]:
        raise ValueError(
            f"{source}: expected stage widths {_STAGE_WIDTHS} (conv1 with 16 filters), found {found}. "
            "Only the classic CIFAR ResNets (resnet20/32/44/56/110 ...) are supported by this loader."
        )


def _resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Return the safetensors file named by ``path`` (a file, or a folder holding exactly one)."""
    source = Path(path)
    if source.is_dir():
        files = sorted(source.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(
                f"{source} is a folder with {len(files)} .safetensors files; pass the path of one file, e.g. "
                f"{source / 'cifar10_resnet56.safetensors'}."
            )
        source = files[0]
    if not source.is_file():
        raise FileNotFoundError(f"No checkpoint at {source}; pass the path of a CIFAR-10 ResNet .safetensors file.")
    return source


def load_cifar10_resnet(path: str | os.PathLike[str]) -> CifarNetForImageClassification:
    """Load a classic CIFAR-10 ResNet (option-A shortcuts, ``linear`` head) from a safetensors file.

    The depth is inferred from the keys (6n+2 with n blocks per stage), ``linear.*`` is renamed to
    ``classifier.*`` and the weights are loaded strictly.  The returned model (in eval mode) records the
    CIFAR-10 class names in ``config.id2label`` and the training normalisation in
    ``config.image_mean`` / ``config.image_std``.
    """
    source = _resolve_checkpoint(path)
    state = load_file(str(source))
    if "linear.weight" not in state or "conv1.weight" not in state:
        raise ValueError(
            f"{source}: expected a stem `conv1.weight` and a `linear.weight` head, found keys "
            f"{sorted(state)[:8]} ... . Is this a CIFAR ResNet checkpoint with the 'module.' prefix removed?"
        )
    blocks = _blocks_per_stage(list(state), source)
    _check_widths(state, source)
    num_labels = int(state["linear.weight"].shape[0])
    labels = CIFAR10_CLASSES if num_labels == len(CIFAR10_CLASSES) else tuple(f"LABEL_{i}" for i in range(num_labels))
    config = CifarNetConfig(
        architecture=f"resnet{6 * blocks + 2}",
        shortcut="A",
        num_channels=int(state["conv1.weight"].shape[1]),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        image_mean=CIFAR10_RESNET_MEAN,
        image_std=CIFAR10_RESNET_STD,
    )
    model = CifarNetForImageClassification(config)
    model.load_state_dict(_to_model_keys(state, model), strict=True)
    return model.eval()


def _to_model_keys(state: dict[str, torch.Tensor], model: CifarNetForImageClassification) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys to the model's (``linear`` -> ``classifier``, body under ``body.``).

    BatchNorm ``num_batches_tracked`` counters, which the checkpoint does not store and inference never uses,
    are taken from the freshly built model so that the load can stay strict for every real tensor.
    """
    renamed = {
        (f"classifier.{key[len('linear.') :]}" if key.startswith("linear.") else f"body.{key}"): value
        for key, value in state.items()
    }
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in renamed:
            renamed[key] = value
    return renamed
