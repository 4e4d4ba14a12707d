"""hf_projkd: projector-based feature distillation (SRD, Miles & Mikolajczyk, AAAI 2024) for Hugging Face."""

from . import models  # registers the CIFAR architectures with the transformers Auto classes
from .callbacks import ProjectorDiagnosticsCallback, add_projector_diagnostics
from .checkpointing import IncompleteCheckpointError, latest_complete_checkpoint
from .config import DistillationArguments
from .features import FeatureExtractor, ModelFeatures
from .hub import StudentHubMixin
from .loading import load_image_classifier
from .losses import (
    classification_loss,
    dkd_loss,
    kd_loss,
    l2_feature_loss,
    logsum_feature_loss,
    smooth_l1_feature_loss,
)
from .metrics import compute_accuracy, top_k_accuracy
from .modeling import DistillationModel, DistillationOutput, LossSettings
from .projector import BatchFeatureNorm, build_feature_norm, build_projector
from .serialization import load_student_weights, save_student
from .trainer import DistillationTrainer
from .validation import NonFiniteLossError

__version__ = "0.1.0"

__all__ = [
    "BatchFeatureNorm",
    "DistillationArguments",
    "DistillationModel",
    "DistillationOutput",
    "DistillationTrainer",
    "FeatureExtractor",
    "IncompleteCheckpointError",
    "NonFiniteLossError",
    "ProjectorDiagnosticsCallback",
    "StudentHubMixin",
    "latest_complete_checkpoint",
    "LossSettings",
    "ModelFeatures",
    "add_projector_diagnostics",
    "build_feature_norm",
    "build_projector",
    "classification_loss",
    "compute_accuracy",
    "dkd_loss",
    "kd_loss",
    "l2_feature_loss",
    "load_image_classifier",
    "load_student_weights",
    "models",
    "logsum_feature_loss",
    "save_student",
    "smooth_l1_feature_loss",
    "top_k_accuracy",
]
