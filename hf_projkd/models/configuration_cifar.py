"""Configuration of the CIFAR benchmark networks used by CRD / RepDistiller style distillation studies.

This module must only import from ``transformers`` (and the standard library): it is copied next to saved
checkpoints so that they load with ``trust_remote_code=True`` where ``hf_projkd`` is not installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PretrainedConfig

#: CIFAR ResNets of He et al. (6n+2 layers, basic blocks); the only family with a choice of shortcut.
BASIC_RESNET_ARCHITECTURES: tuple[str, ...] = (
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
)

#: Every architecture name accepted by :class:`CifarNetConfig`.
CIFAR_ARCHITECTURES: tuple[str, ...] = (
    *BASIC_RESNET_ARCHITECTURES,
    "resnet50",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg13",
    "mobilenetv2",
    "shufflev1",
    "shufflev2",
)

#: Alternative spellings (RepDistiller's own model names) mapped to the canonical names above.
ARCHITECTURE_ALIASES: dict[str, str] = {
    "mobile_half": "mobilenetv2",
    "vgg8_bn": "vgg8",
    "vgg13_bn": "vgg13",
}

#: "A": parameter-free (strided subsampling + zero channel padding); "B": 1x1 conv + BatchNorm projection.
SHORTCUT_TYPES: tuple[str, ...] = ("A", "B")

#: Input normalisation of the CRD / RepDistiller CIFAR-100 training recipe.
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: tuple[float, float, float] = (0.2675, 0.2565, 0.2761)

_DEFAULT_NUM_LABELS = 100


def normalize_architecture_name(name: str) -> str:
    """Return the canonical architecture name for ``name`` (case/dash insensitive) or raise ``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"`architecture` must be a string such as 'resnet8x4', got {type(name).__name__}.")
    key = name.strip().lower().replace("-", "_")
    key = ARCHITECTURE_ALIASES.get(key, key)
    if key not in CIFAR_ARCHITECTURES:
        raise ValueError(
            f"Unknown CIFAR architecture {name!r}. Expected one of: {', '.join(CIFAR_ARCHITECTURES)}. "
            "Pass one of these names as `architecture`."
        )
    return key


def _as_channel_triple(values: Sequence[float], field: str, num_channels: int) -> list[float]:
    """Validate a per-channel normalisation statistic and return it as a JSON-friendly list."""
    as_list = [float(v) for v in values]
    if len(as_list) != num_channels:
        raise ValueError(
            f"`{field}` must have one value per input channel ({num_channels}), got {len(as_list)} values "
            f"({as_list}). Pass a sequence of length `num_channels`."
        )
    return as_list


class CifarNetConfig(PretrainedConfig):
    """Configuration of a small CIFAR classification network from the RepDistiller benchmark suite.

    Args:
        architecture: one of :data:`CIFAR_ARCHITECTURES`, e.g. ``"resnet8x4"`` or ``"wrn_40_2"``.
        num_channels: channels of the input images.
        image_size: side length of the (square) input images the network is meant for.
        shortcut: ``"B"`` (1x1 conv + BN projection, as in RepDistiller) or ``"A"`` (parameter-free, as in
            He et al.'s CIFAR ResNets); only the CIFAR basic-block ResNets accept ``"A"``.
        image_mean: per-channel mean used to normalise inputs scaled to [0, 1] (default: CIFAR-100 / CRD).
        image_std: per-channel standard deviation used to normalise inputs (default: CIFAR-100 / CRD).
        kwargs: forwarded to :class:`~transformers.PretrainedConfig` (``num_labels`` defaults to 100).
    """

    model_type = "cifar_net"

    def __init__(
        self,
        architecture: str = "resnet8x4",
        num_channels: int = 3,
        image_size: int = 32,
        shortcut: str = "B",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("id2label") is None and kwargs.get("num_labels") is None:
            kwargs["num_labels"] = _DEFAULT_NUM_LABELS
        super().__init__(**kwargs)
        self.architecture = normalize_architecture_name(architecture)
        self.num_channels = int(num_channels)
        self.image_size = int(image_size)
        self.shortcut = self._check_shortcut(shortcut, self.architecture)
        self.image_mean = _as_channel_triple(
            CIFAR100_MEAN if image_mean is None else image_mean, "image_mean", self.num_channels
        )
        self.image_std = _as_channel_triple(
            CIFAR100_STD if image_std is None else image_std, "image_std", self.num_channels
        )

    @staticmethod
    def _check_shortcut(shortcut: str, architecture: str) -> str:
        """Validate the shortcut type against the architecture family."""
        value = str(shortcut).upper()
        if value not in SHORTCUT_TYPES:
            raise ValueError(
                f"`shortcut` must be one of {SHORTCUT_TYPES}, got {shortcut!r}. Use 'B' (1x1 conv + BN "
                "projection) or 'A' (parameter-free zero padding)."
            )
        if value == "A" and architecture not in BASIC_RESNET_ARCHITECTURES:
            raise ValueError(
                f"shortcut='A' is only defined for the CIFAR basic-block ResNets "
                f"({', '.join(BASIC_RESNET_ARCHITECTURES)}), got architecture={architecture!r}. "
                "Use shortcut='B' for this architecture."
            )
        return value
