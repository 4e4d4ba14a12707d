"""CIFAR benchmark networks (CRD / RepDistiller suite) as Hugging Face ``transformers`` image classifiers.

Every network is a *body* (a convolutional feature extractor returning one feature map per stage)
followed by global average pooling and a linear ``classifier``.  The input of ``classifier`` is the pooled
pre-logit feature vector, which is what feature-distillation methods match.

This module may only import from ``torch``, ``transformers`` and ``.configuration_cifar``: it is copied
next to saved checkpoints so that they load with ``trust_remote_code=True`` where ``hf_projkd`` is not
installed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from .configuration_cifar import CifarNetConfig

try:  # transformers >= 5: init functions that skip tensors already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - older transformers
    _init = nn.init

# Architecture tables: (stem width, stage widths, blocks per stage) and similar, per family.
_BASIC_RESNETS: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}
_WIDE_RESNETS: dict[str, tuple[int, int]] = {"wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}
_VGGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}
# MobileNetV2 of RepDistiller ("mobile_half"): expansion 6, width 0.5, rows of (expansion, channels, repeats,
# stride) before the width multiplier; stride-2 stem so a 32x32 input ends at 2x2.
_MOBILENET_EXPANSION = 6
_MOBILENET_WIDTH = 0.5
_MOBILENET_ROWS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (_MOBILENET_EXPANSION, 24, 2, 1),
    (_MOBILENET_EXPANSION, 32, 3, 2),
    (_MOBILENET_EXPANSION, 64, 4, 2),
    (_MOBILENET_EXPANSION, 96, 3, 1),
    (_MOBILENET_EXPANSION, 160, 3, 2),
    (_MOBILENET_EXPANSION, 320, 1, 1),
)
_MOBILENET_LAST_CHANNELS = 1280
# Blocks of MobileNetV2 after which a hidden state is reported (the RepDistiller feature taps).
_MOBILENET_TAPS: tuple[int, ...] = (1, 2, 4, 6)
# ShuffleNetV1 (groups 3) and ShuffleNetV2 (1x) as used by RepDistiller: 1x1 stem with 24 channels.
_SHUFFLE_STEM = 24
_SHUFFLEV1_STAGES: tuple[tuple[int, int], ...] = ((240, 4), (480, 8), (960, 4))
_SHUFFLEV1_GROUPS = 3
_SHUFFLEV2_STAGES: tuple[tuple[int, int], ...] = ((116, 3), (232, 7), (464, 3))
_SHUFFLEV2_LAST_CHANNELS = 1024
# RepDistiller's CIFAR ResNet50: 3x3 stem, bottleneck blocks (expansion 4) with 3/4/6/3 blocks.
_RESNET50_STEM = 64
_RESNET50_STAGES: tuple[tuple[int, int, int], ...] = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
_BOTTLENECK_EXPANSION = 4


# --------------------------------------------------------------------------------------------------- helpers
def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    """A 'same'-padded convolution (padding = kernel // 2)."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias)


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution (no bias) followed by BatchNorm, without activation."""
    return nn.Sequential(_conv(in_ch, out_ch, kernel, stride, groups), nn.BatchNorm2d(out_ch))


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution (no bias), BatchNorm and ReLU."""
    return nn.Sequential(_conv(in_ch, out_ch, kernel, stride, groups), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups (ShuffleNet's channel shuffle)."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ZeroPadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: strided subsampling plus zero padding of the new channels.

    The extra channels are split evenly before and after the input channels (``planes // 4`` on each side
    when the width doubles), matching He et al.'s CIFAR ResNets.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError(f"Option-A shortcut cannot shrink channels ({in_ch} -> {out_ch}); use shortcut='B'.")
        self.stride = stride
        self.pad_before = (out_ch - in_ch) // 2
        self.pad_after = out_ch - in_ch - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


def _shortcut(in_ch: int, out_ch: int, stride: int, kind: str) -> nn.Module:
    """Identity where shapes match, else an option-A (zero pad) or option-B (1x1 conv + BN) projection."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    if kind == "A":
        return ZeroPadShortcut(in_ch, out_ch, stride)
    return _conv_bn(in_ch, out_ch, 1, stride)


# ------------------------------------------------------------------------------------------- CIFAR ResNets
class BasicBlock(nn.Module):
    """Post-activation residual block: two 3x3 convs with BN, shortcut added before the final ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = _conv(in_ch, out_ch, 3, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv(out_ch, out_ch, 3)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNetBody(nn.Module):
    """ResNet for 32x32 inputs (6n+2 layers): 3x3 stem, three stages of n basic blocks, strides 1/2/2.

    Parameter names (``conv1``, ``bn1``, ``layer1..3``, ``layerK.i.conv1`` ...) follow the classic CIFAR
    ResNet checkpoints so that they load without renaming.
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], in_channels: int, shortcut: str) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (e.g. 20, 56), got {depth}.")
        blocks = (depth - 2) // 6
        self.conv1 = _conv(in_channels, widths[0], 3)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[1], blocks, 1, shortcut)
        self.layer2 = self._stage(widths[1], widths[2], blocks, 2, shortcut)
        self.layer3 = self._stage(widths[2], widths[3], blocks, 2, shortcut)
        self.out_channels = widths[3]

    @staticmethod
    def _stage(in_ch: int, out_ch: int, blocks: int, stride: int, shortcut: str) -> nn.Sequential:
        layers = [BasicBlock(in_ch, out_ch, stride, shortcut)]
        layers += [BasicBlock(out_ch, out_ch, 1, shortcut) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        states = [x]
        for stage in (self.layer1, self.layer2, self.layer3):
            x = stage(x)
            states.append(x)
        return states


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4) residual block with a projection shortcut where needed."""

    def __init__(self, in_ch: int, planes: int, stride: int) -> None:
        super().__init__()
        out_ch = planes * _BOTTLENECK_EXPANSION
        self.conv1 = _conv(in_ch, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, out_ch, 1)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, "B")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet50Body(nn.Module):
    """RepDistiller's CIFAR ResNet50: 3x3 stride-1 stem (no max-pool) and four bottleneck stages."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, _RESNET50_STEM, 3)
        self.bn1 = nn.BatchNorm2d(_RESNET50_STEM)
        in_ch = _RESNET50_STEM
        stages = []
        for planes, blocks, stride in _RESNET50_STAGES:
            layers = []
            for i in range(blocks):
                layers.append(Bottleneck(in_ch, planes, stride if i == 0 else 1))
                in_ch = planes * _BOTTLENECK_EXPANSION
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = in_ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        states = [x]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            states.append(x)
        return states


# ------------------------------------------------------------------------------------- Wide ResNets (WRN)
class WideBasicBlock(nn.Module):
    """Pre-activation block of Zagoruyko & Komodakis (BN-ReLU-conv twice, no dropout).

    When the width or stride changes, the 1x1 projection (no BN) is applied to the pre-activated input,
    otherwise the raw input is added (as in the reference WRN code).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv(in_ch, out_ch, 3, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv(out_ch, out_ch, 3)
        self.projection = _conv(in_ch, out_ch, 1, stride) if (in_ch != out_ch or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        residual = x if self.projection is None else self.projection(pre)
        return out + residual


class WideResNetBody(nn.Module):
    """WRN-d-k: 16-channel 3x3 stem, three stages of (d-4)/6 blocks (widths 16k/32k/64k), final BN-ReLU."""

    def __init__(self, depth: int, widen: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"Wide ResNet depth must be 6n+4 (e.g. 16, 40), got {depth}.")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = _conv(in_channels, widths[0], 3)
        self.block1 = self._stage(widths[0], widths[1], blocks, 1)
        self.block2 = self._stage(widths[1], widths[2], blocks, 2)
        self.block3 = self._stage(widths[2], widths[3], blocks, 2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.out_channels = widths[3]

    @staticmethod
    def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [WideBasicBlock(in_ch, out_ch, stride)]
        layers += [WideBasicBlock(out_ch, out_ch, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv1(x)
        states = [x]
        x = self.block1(x)
        states.append(x)
        x = self.block2(x)
        states.append(x)
        states.append(F.relu(self.bn(self.block3(x))))
        return states


# ----------------------------------------------------------------------------------------------------- VGG
class VGGBody(nn.Module):
    """CIFAR VGG with BN and no FC layers: five conv groups, 2x2 max-pool after the first three.

    A fourth max-pool is applied only while the map is larger than 4x4 (i.e. for 64x64 inputs), as in
    RepDistiller; the fifth group is followed by global average pooling in the model head.
    """

    def __init__(self, groups: tuple[tuple[int, ...], ...], in_channels: int) -> None:
        super().__init__()
        stages = []
        in_ch = in_channels
        for widths in groups:
            layers: list[nn.Module] = []
            for width in widths:
                layers += [_conv(in_ch, width, 3, bias=True), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                in_ch = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = in_ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        states = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            states.append(x)
            if index < 3 or (index == 3 and x.shape[-1] > 4):
                x = F.max_pool2d(x, 2)
        return states


# ---------------------------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (present even for expansion 1), 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.expand = _conv_bn_relu(in_ch, hidden, 1)
        self.depthwise = _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden)
        self.project = _conv_bn(hidden, out_ch, 1)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2Body(nn.Module):
    """RepDistiller's CIFAR MobileNetV2 (expansion 6, width x0.5, 1280-channel last conv, stride-2 stem)."""

    def __init__(self, in_channels: int, width: float = _MOBILENET_WIDTH) -> None:
        super().__init__()
        in_ch = int(32 * width)
        self.stem = _conv_bn_relu(in_channels, in_ch, 3, stride=2)
        groups = []
        for expansion, channels, repeats, stride in _MOBILENET_ROWS:
            out_ch = int(channels * width)
            blocks = []
            for i in range(repeats):
                blocks.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, expansion))
                in_ch = out_ch
            groups.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(groups)
        last = int(_MOBILENET_LAST_CHANNELS * width) if width > 1.0 else _MOBILENET_LAST_CHANNELS
        self.head_conv = _conv_bn_relu(in_ch, last, 1)
        self.out_channels = last

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        states = [x]
        for index, group in enumerate(self.blocks):
            x = group(x)
            if index in _MOBILENET_TAPS:
                states.append(x)
        states.append(self.head_conv(x))
        return states


# --------------------------------------------------------------------------------------------- ShuffleNetV1
class ShuffleV1Unit(nn.Module):
    """ShuffleNetV1 unit: grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1.

    With stride 2 the branch output is concatenated with a 3x3 average-pooled input (the unit widens);
    with stride 1 it is added to the input.
    """

    def __init__(self, in_ch: int, branch_ch: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        mid = branch_ch // 4
        self.first_groups = first_groups
        self.conv1 = _conv_bn(in_ch, mid, 1, groups=first_groups)
        self.conv2 = _conv_bn(mid, mid, 3, stride, groups=mid)
        self.conv3 = _conv_bn(mid, branch_ch, 1, groups=groups)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(F.relu(self.conv1(x)), self.first_groups)
        out = self.conv3(F.relu(self.conv2(out)))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1))
        return F.relu(out + x)


class ShuffleNetV1Body(nn.Module):
    """RepDistiller's CIFAR ShuffleNetV1 (g=3): 1x1 stem, three stages (each starts with a stride-2 unit)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, _SHUFFLE_STEM, 1)
        in_ch = _SHUFFLE_STEM
        stages = []
        for out_ch, units in _SHUFFLEV1_STAGES:
            layers = []
            for i in range(units):
                # The first unit concatenates its input, so its branch only produces the missing channels;
                # the very first 1x1 conv is dense because 24 stem channels do not split into useful groups.
                branch = out_ch - in_ch if i == 0 else out_ch
                first_groups = 1 if in_ch == _SHUFFLE_STEM else _SHUFFLEV1_GROUPS
                layers.append(ShuffleV1Unit(in_ch, branch, 2 if i == 0 else 1, _SHUFFLEV1_GROUPS, first_groups))
                in_ch = out_ch
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = in_ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.stem(x))
        states = [x]
        for stage in self.stages:
            x = stage(x)
            states.append(x)
        return states


# --------------------------------------------------------------------------------------------- ShuffleNetV2
class ShuffleV2Unit(nn.Module):
    """ShuffleNetV2 basic unit: split channels in half, transform one half (1x1, dw 3x3, 1x1), shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.split = half
        self.branch = nn.Sequential(
            _conv_bn_relu(half, half, 1), _conv_bn(half, half, 3, groups=half), _conv_bn_relu(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, transformed = x[:, : self.split], x[:, self.split :]
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], dim=1), 2)


class ShuffleV2DownUnit(nn.Module):
    """ShuffleNetV2 downsampling unit: two stride-2 branches of ``out_ch // 2`` channels, concat, shuffle."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.left = nn.Sequential(_conv_bn(in_ch, in_ch, 3, 2, groups=in_ch), _conv_bn_relu(in_ch, mid, 1))
        self.right = nn.Sequential(
            _conv_bn_relu(in_ch, mid, 1), _conv_bn(mid, mid, 3, 2, groups=mid), _conv_bn_relu(mid, mid, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1), 2)


class ShuffleNetV2Body(nn.Module):
    """RepDistiller's CIFAR ShuffleNetV2 (1x): 1x1 stem, stages of 1 down + 3/7/3 units, 1x1 conv to 1024."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, _SHUFFLE_STEM, 1)
        in_ch = _SHUFFLE_STEM
        stages = []
        for out_ch, units in _SHUFFLEV2_STAGES:
            units_list = [ShuffleV2Unit(out_ch) for _ in range(units)]
            stages.append(nn.Sequential(ShuffleV2DownUnit(in_ch, out_ch), *units_list))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.head_conv = _conv_bn_relu(in_ch, _SHUFFLEV2_LAST_CHANNELS, 1)
        self.out_channels = _SHUFFLEV2_LAST_CHANNELS

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        states = [x]
        for stage in self.stages:
            x = stage(x)
            states.append(x)
        states.append(self.head_conv(x))
        return states


# ----------------------------------------------------------------------------------------------- factory
def build_body(config: CifarNetConfig) -> nn.Module:
    """Build the feature extractor named by ``config.architecture``."""
    name, in_ch = config.architecture, config.num_channels
    if name in _BASIC_RESNETS:
        depth, widths = _BASIC_RESNETS[name]
        return CifarResNetBody(depth, widths, in_ch, config.shortcut)
    if name in _WIDE_RESNETS:
        return WideResNetBody(*_WIDE_RESNETS[name], in_ch)
    if name in _VGGS:
        return VGGBody(_VGGS[name], in_ch)
    builders = {
        "resnet50": ResNet50Body,
        "mobilenetv2": MobileNetV2Body,
        "shufflev1": ShuffleNetV1Body,
        "shufflev2": ShuffleNetV2Body,
    }
    if name not in builders:
        raise ValueError(f"No body is defined for architecture {name!r}; known: {sorted(builders)}.")
    return builders[name](in_ch)


# ------------------------------------------------------------------------------------------------- models
class CifarNetPreTrainedModel(PreTrainedModel):
    """Base class: config binding and weight initialisation (kaiming for convs, BN weight 1 / bias 0)."""

    config_class = CifarNetConfig
    base_model_prefix = "body"
    main_input_name = "pixel_values"
    input_modalities = "image"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            _init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            _init.ones_(module.weight)
            _init.zeros_(module.bias)
            if module.running_mean is not None:
                _init.zeros_(module.running_mean)
                _init.ones_(module.running_var)
        elif isinstance(module, nn.Linear):
            _init.normal_(module.weight, mean=0.0, std=0.01)
            if module.bias is not None:
                _init.zeros_(module.bias)


class CifarNetForImageClassification(CifarNetPreTrainedModel):
    """A CIFAR benchmark network with a linear ``classifier`` on globally average-pooled features.

    ``hidden_states`` (when requested) are the per-stage feature maps of the body; the last one is the map
    that is pooled into the ``num_features``-dimensional input of ``classifier``.
    """

    def __init__(self, config: CifarNetConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.body = build_body(config)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.body.out_channels, config.num_labels)
        self.post_init()

    @property
    def num_features(self) -> int:
        """Dimension of the pooled pre-logit feature vector (the input of ``classifier``)."""
        return self.body.out_channels

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutputWithNoAttention | tuple[torch.Tensor, ...]:
        """Classify ``pixel_values`` (B, C, H, W); with ``labels`` (B,) also return the cross-entropy loss."""
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        states = self.body(pixel_values)
        features = torch.flatten(self.pool(states[-1]), 1)
        logits = self.classifier(features)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels.to(logits.device).long())
        hidden_states = tuple(states) if output_hidden_states else None
        if not return_dict:
            output = tuple(v for v in (logits, hidden_states) if v is not None)
            return (loss, *output) if loss is not None else output
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=hidden_states)


def create_cifar_model(
    architecture: str, num_labels: int = 100, **config_kwargs: Any
) -> CifarNetForImageClassification:
    """Build a randomly initialised CIFAR benchmark network, e.g. ``create_cifar_model("resnet8x4")``."""
    config = CifarNetConfig(architecture=architecture, num_labels=num_labels, **config_kwargs)
    return CifarNetForImageClassification(config)
