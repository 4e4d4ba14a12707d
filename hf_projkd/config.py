"""``DistillationArguments`` (``TrainingArguments`` plus the method's knobs) and the one table of method presets.

Defaults are the paper's ImageNet CNN setting, i.e. the ``srd+kd`` preset: linear projector, batch norm on both
sides, LogSum loss with exponent 4 and weight 2, KL with T = 1 and weight 1, cross-entropy with weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .losses import FEATURE_LOSSES, LOGIT_LOSSES
from .projector import FEATURE_NORMS, PROJECTORS

WEIGHT_DECAY_FILTERS = ("all", "no_1d", "transformers")
TEACHER_CHECKS = ("warn", "error", "off")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")

# -- the method presets -------------------------------------------------------------------------------------------
_SRD_FEATURES = {"feature_loss": "logsum", "feature_loss_weight": 2.0, "logsum_exponent": 4.0, "projector": "linear",
                 "feature_norm": "batchnorm"}
_NO_FEATURES = {**_SRD_FEATURES, "feature_loss_weight": 0.0}
_NO_LOGITS = {"logit_loss": "none", "logit_loss_weight": 1.0, "temperature": 1.0, "dkd_alpha": 1.0, "dkd_beta": 8.0}
_KL_T1 = {**_NO_LOGITS, "logit_loss": "kl"}
_DKD = {**_NO_LOGITS, "logit_loss": "dkd", "temperature": 4.0}

#: Every loss field of every method, so that a name means one thing wherever it is used (recipes, quickstart,
#: benchmarks, docs). Protocol settings (optimizer, schedule, data) are not here: they live in recipes/configs.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    # cross-entropy only: no teacher forward at all
    "ce": {"ce_weight": 1.0, **_NO_LOGITS, **_NO_FEATURES},
    # Hinton KD as in the CRD benchmark (the paper's "KD" column): 0.1 CE + 0.9 KL at T = 4
    "kd": {"ce_weight": 0.1, **_NO_LOGITS, "logit_loss": "kl", "logit_loss_weight": 0.9, "temperature": 4.0,
           **_NO_FEATURES},
    # Decoupled KD (Zhao et al. 2022): CE + DKD (alpha 1, beta 8, T 4); no 20-epoch warm-up of the DKD weight
    "dkd": {"ce_weight": 1.0, **_DKD, **_NO_FEATURES},
    # the feature term alone: CE + 2 x LogSum(alpha 4) on BN(projected student) vs BN(teacher)
    "srd": {"ce_weight": 1.0, **_NO_LOGITS, **_SRD_FEATURES},
    # the paper's recipe: CE + 2 x LogSum + KL(T = 1)
    "srd+kd": {"ce_weight": 1.0, **_KL_T1, **_SRD_FEATURES},
    # "Ours + DKD"
    "srd+dkd": {"ce_weight": 1.0, **_DKD, **_SRD_FEATURES},
}
METHODS = tuple(METHOD_PRESETS)
LOSS_FIELDS = tuple(METHOD_PRESETS["srd+kd"])


def method_preset(name: str) -> dict[str, Any]:
    """The loss fields of the method ``name`` (a copy), or an error listing the methods."""
    if name not in METHOD_PRESETS:
        raise ValueError(f"Unknown method {name!r}: expected one of {METHODS}.")
    return dict(METHOD_PRESETS[name])


@dataclass
class DistillationArguments(TrainingArguments):
    """Training arguments of a ``DistillationTrainer``: every ``TrainingArguments`` field, plus the ones below.

    ``DistillationArguments.for_method("kd", output_dir=...)`` starts from a preset of ``METHOD_PRESETS``.
    Label smoothing of the cross-entropy term is ``label_smoothing_factor``, inherited from ``TrainingArguments``.
    """

    # -- teacher -------------------------------------------------------------------------------------------
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Teacher: a timm id ('timm/resnet34.tv_in1k'), a transformers id, a local folder or a "
                  "CIFAR-10 ResNet .safetensors file. Ignored when a teacher model object is passed to the trainer."},
    )
    renormalize_teacher_inputs: bool = field(
        default=True,
        metadata={"help": "When the teacher declares another input mean/std than the student's data, convert each "
                  "batch for it (as timm's distillation task does). False: stop with an error instead. Ignored "
                  "for batches that carry 'teacher_pixel_values'."},
    )
    teacher_check: str = field(
        default="warn",
        metadata={"help": f"One of {TEACHER_CHECKS}. Before training, the teacher is scored on the first "
                  "teacher_check_samples examples exactly as it is fed: near-chance accuracy, or a much better "
                  "score under another input normalisation or label order, is a WARNING ('warn') or an error."},
    )
    teacher_check_samples: int = field(default=256, metadata={"help": "Examples the teacher check scores."})
    teacher_feature_module: str | None = field(
        default=None, metadata={"help": "Name of the teacher submodule whose output is the feature (any nn.Module)."}
    )
    student_feature_module: str | None = field(
        default=None, metadata={"help": "Name of the student submodule whose output is the feature (any nn.Module)."}
    )
    student_feature_dim: int | None = field(
        default=None, metadata={"help": "Expected student feature dim; checked against the model's."}
    )
    teacher_feature_dim: int | None = field(
        default=None,
        metadata={"help": "Teacher feature dim: checked against the teacher's, or, with no teacher model, the dim "
                  "of the 'teacher_features' every batch carries (cached teacher outputs)."},
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

    # -- optimizer and schedule ----------------------------------------------------------------------------
    weight_decay_filter: str = field(
        default="all",
        metadata={"help": "Which parameters get weight decay: 'all' (the CNN protocols of the paper), 'no_1d' "
                  "(timm/DeiT: none on biases, norm weights, tokens and position embeddings), or "
                  "'transformers' (the Trainer's name matching)."},
    )
    lr_decay_at: str | None = field(
        default=None,
        metadata={"help": "Step schedule: comma-separated fractions of the run at which the lr is multiplied by "
                  "lr_decay_rate (CRD: 0.625,0.75,0.875 = epochs 150/180/210 of 240; ImageNet ResNet: 0.3,0.6,0.9). "
                  "Warmup comes from warmup_steps. Unset: lr_scheduler_type."},
    )
    lr_decay_rate: float = field(default=0.1, metadata={"help": "Factor of each step of lr_decay_at."})

    # -- batch augmentation on the device (training only) --------------------------------------------------
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup Beta alpha (0: off; DeiT: 0.8)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix Beta alpha (0: off; DeiT: 1.0)."})
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability of mixing a batch."})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "Probability of CutMix when both are on."})
    repeated_augmentation: int = field(
        default=1,
        metadata={"help": "Repeated augmentation (DeiT: 3): each epoch draws N/r images and shows each r times, "
                  "differently augmented, spread over the processes. 1 disables it (plain shuffling)."},
    )

    # -- evaluation ----------------------------------------------------------------------------------------
    eval_teacher_metrics: bool = field(
        default=True,
        metadata={"help": "When a teacher with the student's classes is present, evaluations also report "
                  "eval_teacher_top1/top5 (measured once, its logits cached), eval_teacher_agreement and "
                  "eval_teacher_kl (KL(teacher || student) at T = 1)."},
    )

    # -- scale and speed -----------------------------------------------------------------------------------
    sync_feature_norm: bool = field(
        default=False,
        metadata={"help": "Batch-norm statistics of the feature loss over the GLOBAL batch (all-reduced across "
                  "processes, with gradients) instead of per device (the official behaviour). Costs two small "
                  "all-reduces per step; makes the feature term independent of the number of processes."},
    )
    compile_loss_terms: bool = field(
        default=False,
        metadata={"help": "torch.compile the loss region (projector, both norms, LogSum, KL / DKD, CE) into a few "
                  "fused kernels, with torch_compile_backend / torch_compile_mode (GPU: the recipes turn it on)."},
    )
    teacher_channels_last: bool = field(
        default=False, metadata={"help": "Run the teacher (and its inputs) in channels_last memory format (CNNs)."}
    )
    teacher_compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the teacher's feature forward (inference only, no autograd graph)."},
    )
    teacher_dtype: str = field(
        default="auto",
        metadata={"help": f"One of {TEACHER_DTYPES}: 'auto' keeps the teacher's weights and runs it under the "
                  "student's autocast; 'bfloat16' / 'float16' cast the frozen teacher's weights (faster on GPUs, "
                  "no fp32 weight reads)."},
    )

    # -- output folder -------------------------------------------------------------------------------------
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a new run in an output_dir that already holds checkpoints (they are then rotated "
                  "away). Default: refuse, and say how to resume instead."},
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
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={"help": "Kept False: the Trainer's filter reads the loss on the host every step (a device "
                  "sync); DistillationTrainer's own guard stops a run whose loss turns NaN/inf without one."},
    )

    @classmethod
    def for_method(cls, method: str, **kwargs: Any) -> DistillationArguments:
        """Arguments with the loss fields of ``METHOD_PRESETS[method]``; ``kwargs`` override any of them."""
        return cls(**{**method_preset(method), **kwargs})

    def __post_init__(self) -> None:
        if isinstance(self.lr_decay_at, (list, tuple)):
            self.lr_decay_at = ",".join(str(float(v)) for v in self.lr_decay_at)
        super().__post_init__()
        _check_choice("feature_loss", self.feature_loss, tuple(FEATURE_LOSSES))
        _check_choice("projector", self.projector, PROJECTORS)
        _check_choice("feature_norm", self.feature_norm, FEATURE_NORMS)
        _check_choice("logit_loss", self.logit_loss, LOGIT_LOSSES)
        _check_choice("weight_decay_filter", self.weight_decay_filter, WEIGHT_DECAY_FILTERS)
        _check_choice("teacher_check", self.teacher_check, TEACHER_CHECKS)
        _check_choice("teacher_dtype", self.teacher_dtype, TEACHER_DTYPES)
        for name in ("feature_loss_weight", "logit_loss_weight", "ce_weight", "dkd_alpha", "dkd_beta",
                     "mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}. Use 0 to switch a term off.")
        for name, usual in (("logsum_exponent", "4"), ("temperature", "1 or 4"), ("lr_decay_rate", "0.1")):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}. Set a positive value (the presets "
                                 f"use {usual}).")
        for name in ("mixup_prob", "mixup_switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}. Set a probability (DeiT: "
                                 "mixup_prob 1.0, mixup_switch_prob 0.5).")
        if not 0.0 <= self.label_smoothing_factor < 1.0:
            raise ValueError(f"label_smoothing_factor must be in [0, 1), got {self.label_smoothing_factor}: 1 would "
                             "leave no signal in the targets. 0.1 is usual (DeiT); 0 turns it off.")
        for name in ("student_feature_dim", "teacher_feature_dim"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)}: give the features' dim, "
                                 "or leave it unset to infer it from the model.")
        if self.repeated_augmentation < 1:
            raise ValueError(f"repeated_augmentation must be >= 1, got {self.repeated_augmentation}: 1 turns it off, "
                             "DeiT uses 3.")
        if self.teacher_check_samples < 1:
            raise ValueError(f"teacher_check_samples must be >= 1, got {self.teacher_check_samples}. To skip the "
                             "teacher check, set teacher_check='off'.")
        if self.feature_loss_weight == 0 and self.logit_loss_weight == 0 and self.ce_weight == 0:
            raise ValueError("All loss weights are 0: nothing would be trained. Set at least one weight > 0.")
        if self.feature_loss_weight == 0 and not self.uses_teacher_logits and self.ce_weight == 0:
            raise ValueError("ce_weight=0 with no teacher term (logit_loss='none', feature_loss_weight=0): nothing "
                             "would be trained. Set ce_weight > 0 or turn a distillation term on.")
        self.lr_decay_fractions  # noqa: B018 - validates lr_decay_at

    @property
    def lr_decay_fractions(self) -> tuple[float, ...]:
        """The fractions of ``lr_decay_at``, validated (each in (0, 1), increasing)."""
        if not self.lr_decay_at:
            return ()
        try:
            values = tuple(float(v) for v in str(self.lr_decay_at).split(",") if v.strip())
        except ValueError as error:
            raise ValueError(f"lr_decay_at must be comma-separated fractions of the run, got {self.lr_decay_at!r}: "
                             "e.g. 0.5,0.75 (x lr_decay_rate at half and three quarters of the steps).") from error
        if not all(0.0 < v < 1.0 for v in values) or list(values) != sorted(values):
            raise ValueError(
                f"lr_decay_at must be increasing fractions of the run in (0, 1), got {self.lr_decay_at!r} (epochs "
                "150/180/210 of 240 are 0.625,0.75,0.875)."
            )
        return values

    @property
    def uses_teacher_logits(self) -> bool:
        return self.logit_loss != "none" and self.logit_loss_weight > 0

    @property
    def uses_features(self) -> bool:
        return self.feature_loss_weight > 0

    @property
    def uses_teacher(self) -> bool:
        """Whether training needs the teacher's outputs (``ce`` does not run the teacher at all)."""
        return self.uses_teacher_logits or self.uses_features

    @property
    def uses_mixup(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def method(self) -> str:
        """The preset these loss fields equal (e.g. ``'srd+kd'``), else ``'custom'``."""
        values = {name: getattr(self, name) for name in LOSS_FIELDS}
        for name, preset in METHOD_PRESETS.items():
            if all(_same(values[k], v) for k, v in preset.items() if _matters(k, preset)):
                return name
        return "custom"


def _matters(name: str, preset: dict[str, Any]) -> bool:
    """Loss fields that change training for this preset (a KL temperature does not matter without a KL term)."""
    if name in ("temperature", "logit_loss_weight"):
        return preset["logit_loss"] != "none"
    if name in ("dkd_alpha", "dkd_beta"):
        return preset["logit_loss"] == "dkd"
    if name in ("feature_loss", "logsum_exponent", "projector", "feature_norm"):
        return preset["feature_loss_weight"] > 0
    return True


def _same(a: Any, b: Any) -> bool:
    return abs(a - b) < 1e-12 if isinstance(a, (int, float)) and isinstance(b, (int, float)) else a == b


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported: expected one of {choices}.")
