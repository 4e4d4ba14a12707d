"""CIFAR benchmark architectures (CRD / RepDistiller suite) as ``transformers`` models.

Importing this package registers ``model_type="cifar_net"`` with ``AutoConfig`` and
``AutoModelForImageClassification``, and marks the classes for auto-class export so that saved folders
carry an ``auto_map`` plus the code files (loadable with ``trust_remote_code=True`` without ``hf_projkd``).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForImageClassification

from .configuration_cifar import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CIFAR_ARCHITECTURES,
    CifarNetConfig,
)
from .modeling_cifar import CifarNetForImageClassification, CifarNetPreTrainedModel, create_cifar_model
from .pretrained import CIFAR10_CLASSES, CIFAR10_RESNET_MEAN, CIFAR10_RESNET_STD, load_cifar10_resnet


def _register() -> None:
    """Register the CIFAR classes with the transformers auto classes (idempotent)."""
    AutoConfig.register(CifarNetConfig.model_type, CifarNetConfig, exist_ok=True)
    AutoModelForImageClassification.register(CifarNetConfig, CifarNetForImageClassification, exist_ok=True)
    CifarNetConfig.register_for_auto_class()
    CifarNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")


_register()

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_RESNET_MEAN",
    "CIFAR10_RESNET_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_ARCHITECTURES",
    "CifarNetConfig",
    "CifarNetForImageClassification",
    "CifarNetPreTrainedModel",
    "create_cifar_model",
    "load_cifar10_resnet",
]
