"""``DistillationArguments``: ``TrainingArguments`` plus the knobs of the distillation method.

Defaults are the paper's ImageNet CNN setting (METHOD.md): linear projector, batch norm on both sides,
LogSum loss with exponent 4 and weight 2, KL with T = 1 and weight 1, cross-entropy with weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .losses import FEATURE_LOSSES, LOGIT_LOSSES
from .projector import FEATURE_NORMS, PROJECTORS

WEIGHT_DECAY_FILTERS = ("all", "no_1d", "transformers")


@dataclass
class DistillationArguments(TrainingArguments):
    """Training arguments of a ``DistillationTrainer``: every ``TrainingArguments`` field, plus the ones below.

    Label smoothing of the cross-entropy term is ``label_smoothing_factor``, inherited from ``TrainingArguments``.
    """

    # -- teacher -------------------------------------------------------------------------------------------
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Teacher: a timm id ('timm/resnet34.tv_in1k'), a transformers id, or a local folder. "
                  "Ignored when a teacher model object is passed to the trainer."},
    )
    renormalize_teacher_inputs: bool = field(
        default=True,
        metadata={"help": "When the teacher declares another input mean/std than the student (timm pretrained_cfg "
                  "or config.image_mean/image_std), convert each batch for it (as timm's distillation task does). "
                  "False: stop with an error instead. Ignored for batches that carry 'teacher_pixel_values'."},
    )
    teacher_feature_module: str | None = field(
        default=None, metadata={"help": "Name of the teacher submodule whose output is the feature (any nn.Module)."}
    )
    student_feature_module: str | None = field(
        default=None, metadata={"help": "Name of the student submodule whose output is the feature (any nn.Module)."}
    )
    student_feature_dim: int | None = field(
        default=None, metadata={"help": "Expected student feature dim; checked against the inferred one."}
    )
    teacher_feature_dim: int | None = field(
        default=None, metadata={"help": "Expected teacher feature dim; checked against the inferred one."}
    )

    # -- feature term --------------------------------------------------------------------------------------
    feature_loss: str = field(default="logsum", metadata={"help": f"One of {tuple(FEATURE_LOSSES)}."})
    feature_loss_weight: float = field(default=2.0, metadata={"help": "Weight w of the feature loss (0 disables it)."})
    logsum_exponent: float = field(default=4.0, metadata={"help": "Exponent alpha of the LogSum loss (> 0)."})
    projector: str = field(default="linear", metadata={"help": f"Student->teacher projector, one of {PROJECTORS}."})
    feature_norm: str = field(
        default="batchnorm", metadata={"help": f"Normalisation of both feature sides, one of {FEATURE_NORMS}."}
    )

    # -- logit term ----------------------------------------------------------------------------------------
    logit_loss: str = field(default="kl", metadata={"help": f"Logit distillation loss, one of {LOGIT_LOSSES}."})
    logit_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the logit distillation loss."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the KL / DKD terms (> 0)."})
    dkd_alpha: float = field(default=1.0, metadata={"help": "DKD weight of the target-class term (TCKD)."})
    dkd_beta: float = field(default=8.0, metadata={"help": "DKD weight of the non-target-class term (NCKD)."})

    # -- cross-entropy -------------------------------------------------------------------------------------
    ce_weight: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy on the labels."})

    # -- optimizer -----------------------------------------------------------------------------------------
    weight_decay_filter: str = field(
        default="all",
        metadata={"help": "Which parameters get weight decay: 'all' (the CNN protocols of the paper), 'no_1d' "
                  "(timm/DeiT: none on biases, norm weights, tokens and position embeddings), or "
                  "'transformers' (the Trainer's name matching)."},
    )

    # -- scale and speed -----------------------------------------------------------------------------------
    sync_feature_norm: bool = field(
        default=False,
        metadata={"help": "Batch-norm statistics of the feature loss over the GLOBAL batch (all-reduced across "
                  "processes, with gradients) instead of per device (the official behaviour). Costs two small "
                  "all-reduces per step; makes the feature term independent of the number of processes."},
    )
    teacher_channels_last: bool = field(
        default=False, metadata={"help": "Run the teacher (and its inputs) in channels_last memory format (CNNs)."}
    )
    teacher_compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the teacher's feature forward (inference only, no autograd graph)."},
    )

    # -- overridden defaults -------------------------------------------------------------------------------
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Kept False: image datasets are transformed on the fly from columns the model never "
                  "sees (e.g. 'image'), which the Trainer would otherwise drop."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Kept False: the DistillationModel uses all its parameters in training (the projector "
                  "only exists when the feature term is on), and True costs an extra autograd traversal per "
                  "step. Set True if your student has parameters the loss never reaches."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("feature_loss", self.feature_loss, tuple(FEATURE_LOSSES))
        _check_choice("projector", self.projector, PROJECTORS)
        _check_choice("feature_norm", self.feature_norm, FEATURE_NORMS)
        _check_choice("logit_loss", self.logit_loss, LOGIT_LOSSES)
        _check_choice("weight_decay_filter", self.weight_decay_filter, WEIGHT_DECAY_FILTERS)
        for name in ("feature_loss_weight", "logit_loss_weight", "ce_weight", "dkd_alpha", "dkd_beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}. Use 0 to switch a term off.")
        for name in ("logsum_exponent", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if not 0.0 <= self.label_smoothing_factor < 1.0:
            raise ValueError(f"label_smoothing_factor must be in [0, 1), got {self.label_smoothing_factor}.")
        for name in ("student_feature_dim", "teacher_feature_dim"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)}.")
        if self.feature_loss_weight == 0 and self.logit_loss_weight == 0 and self.ce_weight == 0:
            raise ValueError("All loss weights are 0: nothing would be trained. Set at least one weight > 0.")

    @property
    def uses_teacher_logits(self) -> bool:
        return self.logit_loss != "none" and self.logit_loss_weight > 0

    @property
    def uses_features(self) -> bool:
        return self.feature_loss_weight > 0


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported: expected one of {choices}.")
