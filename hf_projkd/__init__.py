"""hf_projkd: projector-based feature distillation (SRD, Miles & Mikolajczyk, AAAI 2024) for Hugging Face."""

from . import models  # registers the CIFAR architectures with the transformers Auto classes
from .callbacks import ProjectorDiagnosticsCallback, add_projector_diagnostics
from .checkpointing import (
    IncompleteCheckpointError,
    OutputDirInUseError,
    ResumeMismatchError,
    latest_complete_checkpoint,
)
from .config import METHOD_PRESETS, METHODS, DistillationArguments, method_preset
from .families import ModelAdapter, ModelFeatures, adapter_for
from .loading import create_student, load_image_classifier
from .losses import (
    classification_loss,
    dkd_loss,
    kd_loss,
    l2_feature_loss,
    logsum_feature_loss,
    smooth_l1_feature_loss,
)
from .metrics import agreement_metrics, top_k_accuracy
from .modeling import DistillationModel, DistillationOutput, LossSettings
from .projector import BatchFeatureNorm, build_feature_norm, build_projector
from .teacher_check import TeacherCheckError
from .trainer import DistillationTrainer
from .validation import NonFiniteLossError

__version__ = "0.2.0"

__all__ = [
    "METHODS",
    "METHOD_PRESETS",
    "BatchFeatureNorm",
    "DistillationArguments",
    "DistillationModel",
    "DistillationOutput",
    "DistillationTrainer",
    "IncompleteCheckpointError",
    "LossSettings",
    "ModelAdapter",
    "ModelFeatures",
    "NonFiniteLossError",
    "OutputDirInUseError",
    "ProjectorDiagnosticsCallback",
    "ResumeMismatchError",
    "TeacherCheckError",
    "adapter_for",
    "add_projector_diagnostics",
    "agreement_metrics",
    "build_feature_norm",
    "build_projector",
    "classification_loss",
    "create_student",
    "dkd_loss",
    "kd_loss",
    "l2_feature_loss",
    "latest_complete_checkpoint",
    "load_image_classifier",
    "logsum_feature_loss",
    "method_preset",
    "models",
    "smooth_l1_feature_loss",
    "top_k_accuracy",
]
