"""``DistillationTrainer``: the transformers ``Trainer`` with a frozen teacher and the SRD losses.

One trainer for every method of ``METHOD_PRESETS``: the ``ce`` baseline runs the same loss code without a teacher,
and batches may carry the teacher's outputs (``teacher_logits`` / ``teacher_features``) instead of a teacher model.
"""

from __future__ import annotations

import logging
import os
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler
from transformers import EvalPrediction, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from . import hub
from .checkpointing import (
    RunLock,
    check_fingerprint,
    check_output_dir,
    latest_complete_checkpoint,
    mark_checkpoint_complete,
    resolve_resume_checkpoint,
    unmark_checkpoint,
    weights_digest,
    write_fingerprint,
)
from .config import LOSS_FIELDS, DistillationArguments
from .data.imagenet import RepeatedAugmentationSampler
from .distributed import optimize_teacher_call, prepare_teacher, world_size
from .families import ModelFeatures, adapter_for, normalization_of, probe_dims
from .loading import load_image_classifier
from .metrics import agreement_metrics, top_k_accuracy
from .modeling import DistillationModel, DistillationOutput, LossSettings
from .schedules import step_decay_scheduler
from .teacher_check import COMMON_NORMALIZATIONS, TeacherCheckError, TeacherCheckResult, score_teacher
from .validation import (
    CheckedCollator,
    NonFiniteLossGuard,
    TeacherInputNormalizer,
    check_batch,
    check_dataset,
    check_label_names,
    same_normalization,
)

logger = logging.getLogger(__name__)

LOSS_COMPONENTS = ("loss_ce", "loss_logit", "loss_feature")
CACHED_TEACHER_KEYS = ("teacher_logits", "teacher_features")
_HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class DistillationTrainer(Trainer):
    """Trains a student from a frozen teacher with CE + logit KD + projector feature loss (SRD).

    Args:
        model: the student, an ``nn.Module`` (timm, transformers or any classifier) or an id / local path.
        teacher_model: the teacher, a module or an id / path; defaults to ``args.teacher_model_name_or_path``.
            Not needed for the ``ce`` method, nor when every batch carries the teacher's outputs
            (``teacher_logits`` / ``teacher_features``; give ``teacher_feature_dim`` then).
        args: ``DistillationArguments`` (defaults: the paper's ImageNet CNN setting, the ``srd+kd`` preset).
        input_size: (C, H, W) for a dummy forward, only for models whose dims no attribute gives.
        **kwargs: anything ``Trainer`` takes (datasets, collator, callbacks, processing_class, ...).
            ``compute_metrics`` defaults to top-1/top-5 of the student (and the teacher metrics, see
            ``eval_teacher_metrics``).

    The trained module is a ``DistillationModel`` (student + projector + normalisers). The teacher is kept out of
    it: frozen, in eval mode, run under ``torch.no_grad`` on the student's device and inside the same autocast.
    Checkpoints hold the whole ``DistillationModel`` (so the Trainer's own resume and best-model loading work) plus
    a run fingerprint and a checksum manifest; ``save_model`` and pushes write the student alone, natively.
    """

    # compute_loss returns a per-micro-batch mean: the Trainer must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | str,
        teacher_model: nn.Module | str | None = None,
        args: DistillationArguments | None = None,
        input_size: tuple[int, int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        args = args if args is not None else DistillationArguments(output_dir="distillation_output")
        if not isinstance(args, DistillationArguments):
            raise TypeError(
                f"DistillationTrainer needs DistillationArguments, got {type(args).__name__}. Build them with "
                "DistillationArguments(output_dir=..., <TrainingArguments fields>, <distillation fields>)."
            )
        if args.fp16 and args.device.type == "cpu":
            raise ValueError("fp16=True needs a GPU: fp16 mixed precision does not run on the CPU (it would silently "
                             "train in fp32). Use bf16=True on the CPU, or neither.")
        student = load_image_classifier(model) if isinstance(model, (str, os.PathLike)) else model
        teacher = teacher_model if teacher_model is not None else (  # not loaded when nothing would use it
            args.teacher_model_name_or_path if args.uses_teacher or args.eval_teacher_metrics else None)
        teacher = load_image_classifier(teacher) if isinstance(teacher, (str, os.PathLike)) else teacher
        if teacher is not None and teacher is student:
            raise ValueError("The same module was passed as student and teacher: the teacher is frozen, so nothing "
                             "would train. Pass a separate teacher (e.g. a copy.deepcopy of a trained model).")
        self.student_adapter = adapter_for(student, args.student_feature_module)
        self.teacher_adapter = adapter_for(teacher, args.teacher_feature_module) if teacher is not None else None
        student_dim, student_classes = probe_dims(self.student_adapter, input_size)
        _check_dim("student", student_dim, args.student_feature_dim)
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            teacher_size = input_size or self.student_adapter.input_size()
            teacher_dim, teacher_classes = probe_dims(self.teacher_adapter, teacher_size)
            _check_dim("teacher", teacher_dim, args.teacher_feature_dim)
        elif args.uses_features and args.teacher_feature_dim is None:
            raise ValueError(
                "No teacher model: with the feature term on, every batch must carry 'teacher_features' and their "
                "dim must be given as teacher_feature_dim. Pass teacher_model=..., set teacher_model_name_or_path, "
                "or use the 'ce' method."
            )
        else:
            teacher_dim, teacher_classes = args.teacher_feature_dim or student_dim, student_classes
        if args.uses_teacher_logits and student_classes != teacher_classes:
            raise ValueError(
                f"The student predicts {student_classes} classes but the teacher {teacher_classes}: the "
                f"'{args.logit_loss}' logit loss compares them class by class. Give the student a head with "
                f"{teacher_classes} classes (num_labels={teacher_classes}), use a teacher trained on the same "
                "label set, or set logit_loss='none' to distil features only."
            )
        if args.uses_teacher_logits and teacher is not None:
            check_label_names(self.student_adapter, self.teacher_adapter)
        for name, data in _named_datasets(kwargs.get("train_dataset"), kwargs.get("eval_dataset")):
            check_dataset(data, student_classes, args, split=name)
        self.teacher = teacher
        self.num_classes = student_classes
        self._teacher_normalizer = self._teacher_input_conversion(
            args, kwargs.get("processing_class"), kwargs.get("data_collator")
        )
        self._mixup = _build_mixup(args, student_classes)
        self._loss_guard = NonFiniteLossGuard()
        distillation_model = DistillationModel(
            student, student_dim, teacher_dim, LossSettings.from_args(args), projector=args.projector,
            feature_norm=args.feature_norm, adapter=self.student_adapter, sync_feature_norm=args.sync_feature_norm,
        )
        if args.compile_loss_terms:
            distillation_model.compile_loss_terms(args.torch_compile_backend, args.torch_compile_mode)
        kwargs.setdefault("compute_metrics", self.distillation_metrics)
        check_output_dir(args.output_dir)
        super().__init__(model=distillation_model, args=args, **kwargs)
        self.add_callback(_DatasetEpoch(self))
        self.data_collator = CheckedCollator(self.data_collator)  # images of different sizes: named, with the fix
        self._teacher_call = None
        if teacher is not None:
            self.teacher = prepare_teacher(self.accelerator, teacher)  # device, and ZeRO-3 sharding if asked
            if args.teacher_dtype != "auto":
                self.teacher.to(_HALF[args.teacher_dtype])
            self._teacher_call = optimize_teacher_call(
                self.teacher, self.teacher_adapter, args.teacher_channels_last, args.teacher_compile,
                args.torch_compile_backend, args.torch_compile_mode,
            )
        self._teacher_eval = (teacher is not None and args.eval_teacher_metrics and teacher_classes == student_classes)
        self._teacher_eval_logits: dict[str, np.ndarray] = {}
        self._eval_key: str | None = None  # set while evaluate() runs: which evaluation the teacher logits are for
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_steps = 0
        self._run_lock: RunLock | None = None
        self._fingerprint: dict[str, Any] | None = None
        self.teacher_check_result: TeacherCheckResult | None = None

    # -- teacher inputs --------------------------------------------------------------------------------------
    def _teacher_input_conversion(
        self, args: DistillationArguments, processor: Any, collator: Any
    ) -> TeacherInputNormalizer | None:
        """How the student's ``pixel_values`` become the teacher's, from what each side declares.

        The data's normalisation is read from the image processor, else the collator (``image_mean``/``image_std``),
        else the student's config; timm's ``pretrained_cfg`` only as an assumption, which the teacher check tests.
        """
        self._student_normalization = self._teacher_normalization = None
        if self.teacher_adapter is None:
            return None
        teacher = self.teacher_adapter.input_normalization()
        data = normalization_of(processor) or normalization_of(collator)
        declared = self.student_adapter.input_normalization()
        source = "the image processor / collator" if data is not None else (declared.source if declared else None)
        student = data if data is not None else (declared.values if declared else None)
        self._student_normalization, self._teacher_normalization = student, teacher.values if teacher else None
        if teacher is None:
            logger.info("The teacher declares no input normalisation: it gets the student's pixel_values as they are.")
            return None
        if student is None:
            if getattr(collator, "teacher", None) is None:  # a collator that prepares teacher_pixel_values says so
                logger.warning(
                    "The student's input normalisation is unknown (no image processor, no collator image_mean/"
                    "image_std, nothing in its config), so the teacher, which expects mean/std %s (%s), gets the "
                    "student's pixel_values unconverted. Pass processing_class=<image processor>, or batches with "
                    "'teacher_pixel_values'; the teacher check before training tests how it scores as fed.",
                    teacher.values, teacher.source,
                )
            return None
        if same_normalization(student, teacher.values):
            return None
        if not args.renormalize_teacher_inputs:
            raise ValueError(
                f"The student's inputs are normalised with mean/std {student} ({source}) but the teacher expects "
                f"{teacher.values} ({teacher.source}). Set renormalize_teacher_inputs=True to convert each batch for "
                "the teacher, or pass 'teacher_pixel_values' prepared with the teacher's own transform in each batch."
            )
        assumed = " (assumed: a timm model records its default weights' statistics)" if (
            data is None and declared is not None and declared.assumed) else ""
        logger.info("Teacher inputs are re-normalised from the student's mean/std %s (%s%s) to the teacher's %s (%s).",
                    student, source, assumed, teacher.values, teacher.source)
        return TeacherInputNormalizer(student, teacher.values)

    def _teacher_inputs(self, inputs: dict[str, Any], pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's ``teacher_pixel_values``, else its ``pixel_values`` re-normalised for the teacher."""
        if inputs.get("teacher_pixel_values") is not None:
            return inputs["teacher_pixel_values"]
        pixel_values = inputs["pixel_values"] if pixel_values is None else pixel_values
        return self._teacher_normalizer(pixel_values) if self._teacher_normalizer is not None else pixel_values

    @torch.no_grad()
    def teacher_forward(self, pixel_values: torch.Tensor) -> ModelFeatures:
        """Teacher logits and features, under the accelerator's autocast: the student's mixed precision.

        The Trainer autocasts only the prepared model's forward, so without this the teacher would run in fp32.
        Inputs are cast to the teacher's weight dtype (a bf16/fp16 teacher beside an fp32 student works).
        """
        if self.teacher.training:  # someone called .train() on it: BN running statistics must stay frozen
            self.teacher.eval()
        weight = next(self.teacher.parameters(), None)
        if weight is not None and weight.dtype != pixel_values.dtype and weight.is_floating_point():
            pixel_values = pixel_values.to(weight.dtype)
        try:
            with self.accelerator.autocast():
                return self._teacher_call(pixel_values)
        except Exception as error:
            size = self.teacher_adapter.input_size()
            expects = f"It declares inputs of {tuple(size)}. " if size else ""
            raise ValueError(
                f"The teacher ({type(self.teacher).__name__}) failed on inputs of shape {tuple(pixel_values.shape)} "
                f"({type(error).__name__}: {error}). {expects}If it needs another input size or normalisation, give "
                "each batch 'teacher_pixel_values' prepared with the teacher's own transform."
            ) from error

    def _teacher_outputs(self, inputs: dict[str, Any], pixel_values: torch.Tensor) -> ModelFeatures:
        """Cached outputs from the batch when it carries them, else a teacher forward."""
        cached = {k: inputs.get(k) for k in CACHED_TEACHER_KEYS}
        if any(v is not None for v in cached.values()):
            logits, features = cached["teacher_logits"], cached["teacher_features"]
            needed = [k for k, used in (("teacher_logits", self.args.uses_teacher_logits),
                                        ("teacher_features", self.args.uses_features)) if used and cached[k] is None]
            if needed:
                raise KeyError(f"The batch carries cached teacher outputs but not {needed}, which this method needs: "
                               f"add {' and '.join(repr(k) for k in needed)} to each batch, or switch that term off.")
            return ModelFeatures(logits, features, logits, logits)
        if self.teacher is None:
            raise KeyError(
                f"There is no teacher model and the batch carries no cached teacher outputs ({CACHED_TEACHER_KEYS}); "
                f"its keys are {sorted(k for k, v in inputs.items() if v is not None)}. Pass teacher_model=..., or add "
                "the cached outputs to each batch."
            )
        return self.teacher_forward(self._teacher_inputs(inputs, pixel_values))

    # -- loss ------------------------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, DistillationOutput]:
        """Teacher forward (no autograd) + student/projector forward; the student alone at evaluation (plus the
        teacher's logits on the same batch when the teacher metrics need them)."""
        args = self.args
        size = self.student_adapter.input_size()
        check_batch(inputs, size[0] if size else None, model.training and (args.ce_weight > 0 or
                                                                            args.logit_loss == "dkd"))
        pixel_values, labels = inputs["pixel_values"], inputs.get("labels")
        if not model.training:
            outputs = model(pixel_values=pixel_values, labels=labels)
            if self._teacher_eval and self._eval_key is not None and self._eval_key not in self._teacher_eval_logits:
                outputs["teacher_logits"] = self.teacher_forward(self._teacher_inputs(inputs)).logits.float()
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        teacher_pixels = inputs.get("teacher_pixel_values")
        if self._mixup is not None:
            pixel_values, teacher_pixels, labels = _mix(self._mixup, pixel_values, teacher_pixels, labels)
        teacher = None
        if args.uses_teacher:  # the ce baseline never runs the teacher
            batch = {**inputs, "pixel_values": pixel_values, "teacher_pixel_values": teacher_pixels}
            teacher = self._teacher_outputs(batch, pixel_values)
        outputs = model(
            pixel_values=pixel_values,
            labels=labels,
            # the teacher's inference logits (for a teacher with a distillation token, the average of its heads)
            teacher_logits=teacher.logits if teacher is not None and args.uses_teacher_logits else None,
            teacher_features=teacher.features if teacher is not None and args.uses_features else None,
        )
        self._accumulate_components(outputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    # -- logging ---------------------------------------------------------------------------------------------
    def _accumulate_components(self, outputs: DistillationOutput) -> None:
        """Sums the loss components on the device; they are read on the host only at logging steps."""
        self._loss_guard.observe({name: outputs.get(name) for name in ("loss", *LOSS_COMPONENTS)})
        for name in LOSS_COMPONENTS:
            value = outputs.get(name)
            if value is not None:
                total = self._component_sums.get(name)
                self._component_sums[name] = value.detach() if total is None else total + value.detach()
        self._component_steps += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds each loss component, averaged over the micro-batches since the last log and over processes.

        First stops the run if the loss went NaN/inf since the last log (``NonFiniteLossGuard``).
        """
        self._check_finite_loss()
        if "loss" in logs and self._component_steps:
            for name, total in self._component_sums.items():
                mean = self.accelerator.reduce(total / self._component_steps, reduction="mean")
                logs[name] = round(mean.item(), 4)
            self._component_sums, self._component_steps = {}, 0
        super().log(logs, start_time)

    def _check_finite_loss(self) -> None:
        """Stops every process together if the loss went NaN/inf on any of them since the last check."""
        self._loss_guard.check(
            self.state.global_step, lambda: latest_complete_checkpoint(self.args.output_dir),
            lambda flags: self.accelerator.reduce(flags, "sum"),
        )

    # -- optimizer and schedule ------------------------------------------------------------------------------
    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Weight decay on ``all`` parameters (CNN protocols), or ``no_1d``: none on 1-d parameters and on the
        student family's token / position embeddings (timm, DeiT), or the Trainer's own ``transformers`` rule."""
        if self.args.weight_decay_filter == "transformers":
            return super().get_decay_parameter_names(model)
        names = [name for name, _ in model.named_parameters()]
        if self.args.weight_decay_filter == "all":
            return names
        student_no_decay = {f"student.{n}" for n in self.student_adapter.no_decay_names()}
        parameters = dict(model.named_parameters())
        return [n for n in names if parameters[n].ndim > 1 and n not in student_no_decay]

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        # Private override: the Trainer has no public hook for the sampler. DeiT's repeated augmentation
        # (``repeated_augmentation`` > 1) needs one laid out for accelerate's batch sharding.
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.repeated_augmentation <= 1 or isinstance(dataset, torch.utils.data.IterableDataset):
            return super()._get_train_sampler(train_dataset)
        return RepeatedAugmentationSampler(len(dataset), self._train_batch_size, self.args.world_size,
                                           self.args.repeated_augmentation, self.args.seed)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        """The step schedule of ``lr_decay_at`` (warmup from ``warmup_steps``), else the Trainer's own."""
        if self.lr_scheduler is None and self.args.lr_decay_fractions:
            self.lr_scheduler = step_decay_scheduler(
                optimizer if optimizer is not None else self.optimizer, self.args.lr_decay_fractions,
                self.args.lr_decay_rate, num_training_steps, self.args.get_warmup_steps(num_training_steps),
            )
            self._created_lr_scheduler = True  # so the Trainer rebuilds it on a later train() call
        return super().create_scheduler(num_training_steps, optimizer)

    # -- training entry ----------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train`` with: ``resume_from_checkpoint`` defaulting to ``args.resume_from_checkpoint``
        (``True``: the newest intact checkpoint); a verified, fingerprint-matched checkpoint; a lock on
        ``output_dir``; a refusal to start afresh over existing checkpoints; and the teacher check first."""
        args = self.args
        if args.max_steps <= 0 and args.num_train_epochs <= 0:
            raise ValueError(f"num_train_epochs={args.num_train_epochs} and no max_steps: nothing would be trained "
                             "(and an untrained model saved). Set num_train_epochs > 0 or max_steps > 0.")
        if resume_from_checkpoint is None:
            resume_from_checkpoint = args.resume_from_checkpoint
        if args.should_save:
            self._run_lock = RunLock(args.output_dir).acquire()
        try:
            resume = resolve_resume_checkpoint(resume_from_checkpoint, args.output_dir, args.overwrite_output_dir,
                                               args.should_save)
            self.accelerator.wait_for_everyone()
            if resume is not None:
                check_fingerprint(resume, self.run_fingerprint())
            self.teacher_check_result = self.check_teacher()
            return super().train(resume_from_checkpoint=resume, **kwargs)
        finally:
            if self._run_lock is not None:
                self._run_lock.release()
                self._run_lock = None

    # -- the teacher check -----------------------------------------------------------------------------------
    def check_teacher(self) -> TeacherCheckResult | None:
        """Score the teacher on the first ``teacher_check_samples`` examples as fed (the eval split, else the train
        split, in order, without touching the training randomness); WARNING or error on a suspicious result."""
        args = self.args
        if (args.teacher_check == "off" or self.teacher is None or not args.uses_teacher
                or not self._teacher_eval_compatible()):
            return None
        dataset = self.eval_dataset if self.eval_dataset is not None else self.train_dataset
        if isinstance(dataset, dict):
            dataset = next(iter(dataset.values()))
        if dataset is None:
            return None
        feeds = {"as fed": lambda b: self._teacher_inputs(b)}
        teacher_stats = self._teacher_normalization
        if teacher_stats is not None:
            options = {**COMMON_NORMALIZATIONS, "the teacher's own mean/std (no conversion)": teacher_stats}
            for name, stats in options.items():
                if len(stats[0]) != len(teacher_stats[0]):  # another channel count: not a candidate
                    continue
                if self._student_normalization is None or not same_normalization(stats, self._student_normalization):
                    convert = TeacherInputNormalizer(stats, teacher_stats)
                    feeds[name] = lambda b, c=convert: c(b["pixel_values"])
        with _isolated_rng():
            loader = DataLoader(dataset, batch_size=min(args.per_device_eval_batch_size, args.teacher_check_samples),
                                sampler=SequentialSampler(dataset) if hasattr(dataset, "__len__") else None,
                                collate_fn=self.data_collator, num_workers=0)
            size = self.student_adapter.input_size()
            batches = _checked_batches(loader, size[0] if size else None, args.device)
            result = score_teacher(batches, lambda x: self.teacher_forward(x).logits.float(), feeds,
                                   self.num_classes, args.teacher_check_samples)
        if result is None:
            logger.info("Teacher check skipped: the batches carry no labels to score the teacher against.")
            return None
        if self.is_world_process_zero():
            logger.info("Teacher check: %.1f%% top-1 on the first %d examples as fed (chance %.1f%%).",
                        100 * result.top1, result.samples, 100 * result.chance)
        problems = result.problems()
        if problems:
            message = "Teacher check: " + " Also, ".join(problems) + "."
            if args.teacher_check == "error":
                raise TeacherCheckError(message + " (teacher_check='warn' only warns.)")
            if self.is_world_process_zero():
                logger.warning(message + " (teacher_check='error' stops the run; 'off' skips the check.)")
        return result

    def _teacher_eval_compatible(self) -> bool:
        """Whether the teacher's classes are the dataset's (same count; same names where both have names)."""
        if self.teacher_adapter is None or self.teacher_adapter.num_classes not in (None, self.num_classes):
            return False
        try:
            check_label_names(self.student_adapter, self.teacher_adapter)
        except ValueError:
            return False
        return True

    # -- evaluation ------------------------------------------------------------------------------------------
    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """``Trainer.evaluate`` on the model every process holds (buffers synced from process 0 first)."""
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError("evaluate() needs evaluation data, but none was given: pass eval_dataset=... to "
                             "DistillationTrainer or to evaluate().")
        sync_buffers(self.model)
        self._eval_key = metric_key_prefix if eval_dataset is None or isinstance(eval_dataset, str) else (
            f"{metric_key_prefix}:{id(eval_dataset)}")
        if self._teacher_eval and not self._teacher_eval_compatible():
            self._teacher_eval = False
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._eval_key = None

    def distillation_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        """Top-1 / top-5 (%) of the student through the shipped ``evaluate`` metric; with a teacher of the same
        classes also ``teacher_top1/top5`` (its logits computed at the first evaluation and cached),
        ``teacher_agreement`` (%) and ``teacher_kl`` (KL(teacher || student), T = 1)."""
        logits = prediction.predictions
        student, teacher = (logits[0], logits[1] if len(logits) > 1 else None) if isinstance(logits, tuple) else (
            logits, None)
        student = np.asarray(student, dtype=np.float32)
        labels = np.asarray(prediction.label_ids)
        finite = np.isfinite(student).all(axis=1)
        metrics = top_k_accuracy(student, labels)
        if not finite.all():
            logger.warning("%d of %d evaluation samples have NaN/inf student logits, which should be finite (NaN "
                           "inputs, or a diverged model); they count as wrong and make eval_loss NaN. Check the data "
                           "with torch.isfinite(batch['pixel_values']).all() and the weights.", int((~finite).sum()),
                           finite.size)
            metrics["nonfinite_logits"] = int((~finite).sum())
        if not self._teacher_eval or self._eval_key is None:
            return metrics
        if teacher is not None:
            self._teacher_eval_logits[self._eval_key] = np.asarray(teacher, dtype=np.float32)
        cached = self._teacher_eval_logits.get(self._eval_key)
        if cached is None or cached.shape != student.shape:
            return metrics
        teacher_accuracy = top_k_accuracy(cached, labels)
        agreement = agreement_metrics(student, cached)
        metrics.update({f"teacher_{k}": v for k, v in teacher_accuracy.items()})
        metrics.update(teacher_agreement=agreement["agreement"], teacher_kl=agreement["kl"])
        return metrics

    # -- saving ----------------------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False,
                   allow_non_finite: bool = False) -> None:
        """The student alone, in its own library's format (``save_pretrained`` / timm's Hub format), with the image
        processor; a student with NaN/inf weights is refused unless ``allow_non_finite``.

        Inside a checkpoint (the Trainer's internal call with a folder) the whole ``DistillationModel`` is saved
        instead, so that resuming restores projector and normalisers with the Trainer's own loading.
        """
        sync_buffers(self.model)
        if _internal_call and output_dir is not None:
            return super().save_model(output_dir, _internal_call=True)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            if not allow_non_finite:
                _check_finite_weights(self.student, self._loss_guard.failed)
            self.student_adapter.save(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # Private override, needed because no public hook runs between the checkpoint's files and its rotation:
        # refuse to save a diverged model, add the run fingerprint, mark the folder complete (checksums) LAST, and
        # only then rotate old checkpoints, so that a kill at any moment leaves an intact checkpoint behind.
        self._check_finite_loss()
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            unmark_checkpoint(folder)
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            write_fingerprint(folder, self.run_fingerprint())
        self.accelerator.wait_for_everyone()  # every process's files (RNG states) are on disk
        if self.args.should_save:
            mark_checkpoint_complete(folder, self.state.global_step)
            rotate_checkpoints(output_dir=os.path.dirname(folder), save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def run_fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to be resumed by it (see ``checkpointing``)."""
        if self._fingerprint is None:
            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            teacher = None
            if self.teacher is not None:
                teacher = {"class": type(self.teacher).__name__, "weights_sha256": weights_digest(self.teacher)}
            self._fingerprint = {
                "student": {"architecture": self.student_adapter.architecture,
                            "parameters": {n: list(p.shape) for n, p in model.student.named_parameters()}},
                "teacher": teacher,
                "method": {**{k: getattr(self.args, k) for k in LOSS_FIELDS},
                           "feature_dims": list(model.feature_dims), "sync_feature_norm": self.args.sync_feature_norm},
            }
        return self._fingerprint

    # -- the Hub -----------------------------------------------------------------------------------------------
    model_card_context: dict[str, Any] | None = None

    def card_info(self, **overrides: Any) -> hub.CardInfo:
        """Everything the model card says, read from this run (``model_card_context`` adds what it cannot know:
        ``dataset``, ``dataset_split``, ``baseline_result``, ``license``, ``eval_examples``,
        ``extra_hyperparameters``)."""
        context = {**(self.model_card_context or {}), **{k: v for k, v in overrides.items() if v is not None}}
        args, adapter = self.args, self.student_adapter
        size = adapter.input_size() or (3, 224, 224)
        model_id = self.hub_model_id or args.hub_model_id
        entry = hub.last_evaluation(self.state.log_history)
        source = f"evaluated by this run after step {entry.get('step')} of {self.state.global_step}"
        results, agreement = [], {}
        if entry:
            results.append(hub.MeasuredResult("student (this model)", entry["eval_top1"], entry.get("eval_top5"),
                                              source))
            if "eval_teacher_top1" in entry:
                results.append(hub.MeasuredResult(
                    f"teacher ({args.teacher_model_name_or_path or type(self.teacher).__name__})",
                    entry["eval_teacher_top1"], entry.get("eval_teacher_top5"), source + ", on the same images"))
                agreement = {"agreement": entry["eval_teacher_agreement"], "kl": entry["eval_teacher_kl"]}
        if context.get("baseline_result") is not None:
            results.append(context["baseline_result"])
        teacher_name = args.teacher_model_name_or_path or (type(self.teacher).__name__ if self.teacher else "none")
        hyperparameters = {name: getattr(args, name) for name in (*hub.DISTILLATION_FIELDS, *hub.TRAINING_FIELDS)}
        hyperparameters.update(
            teacher_model_name_or_path=teacher_name, method=args.method, lr_schedule=hub.schedule_description(args),
            total_train_batch_size=args.per_device_train_batch_size * args.gradient_accumulation_steps
            * args.world_size, trained_steps=self.state.global_step,
        )
        hyperparameters.update(context.get("extra_hyperparameters", {}))
        costs = {f"student ({adapter.architecture})": (hub.count_parameters(self.student),
                                                       hub.count_macs(self.student, size))}
        if self.teacher is not None:
            teacher_size = self.teacher_adapter.input_size() or size
            costs[f"teacher ({teacher_name})"] = (hub.count_parameters(self.teacher),
                                                  hub.count_macs(self.teacher, teacher_size))
        return hub.CardInfo(
            model_id=model_id or Path(args.output_dir).name, library_name=adapter.library,
            student_architecture=adapter.architecture, teacher_name=teacher_name,
            dataset_id=str(context.get("dataset") or "unknown"),
            dataset_split=str(context.get("dataset_split") or "unknown"), input_size=size[-1], results=results,
            hyperparameters={k: getattr(v, "value", v) for k, v in hyperparameters.items() if v is not None},
            method=args.method, agreement=agreement, costs=costs, eval_examples=context.get("eval_examples"),
            usage_snippet=hub.usage_snippet(model_id, args.output_dir, adapter), license=context.get("license"),
        )

    def create_model_card(self, model_name: str | None = None, dataset: str | list[str] | None = None,
                          tags: str | list[str] | None = None, **kwargs: Any) -> None:
        """Write ``README.md`` (the SRD card) into ``output_dir``. ``dataset``, ``tags``, ``license``,
        ``dataset_split``, ``baseline_result`` and ``eval_examples`` override ``model_card_context``;
        ``model_name`` ("user/name") sets the card's model id. The Trainer's other card arguments do not apply."""
        if not self.is_world_process_zero():
            return
        known = ("dataset_split", "baseline_result", "license", "eval_examples")
        dataset = dataset[0] if isinstance(dataset, list) and dataset else dataset
        info = self.card_info(dataset=dataset, **{k: kwargs.get(k) for k in known})
        if model_name and "/" in model_name:
            info.model_id = model_name
        info.tags = [tags] if isinstance(tags, str) else list(tags or [])
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        hub.build_model_card(info).save(Path(self.args.output_dir) / "README.md")

    def _stage_student(self) -> Path:
        return hub.stage_student(self.student_adapter, Path(self.args.output_dir) / hub.HUB_UPLOAD_DIRNAME,
                                 self.processing_class, Path(self.args.output_dir) / "README.md")

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **card_kwargs: Any) -> Any:
        """Write the card, stage the student alone and upload that folder to ``hub_model_id``."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        if not self.is_world_process_zero():
            return None
        _check_finite_weights(self.student, self._loss_guard.failed)
        self.create_model_card(**card_kwargs)
        folder = self._stage_student()
        self._finish_current_push()
        return hub.upload_folder(folder, self.hub_model_id, commit_message, token,
                                 revision if revision is not None else self.args.hub_revision, blocking)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Private override: the Trainer would upload the checkpoint's model file, here the whole DistillationModel
        # (projector included) in a format no library loads; pushes during training upload the student alone.
        if not self.is_world_process_zero() or self.args.hub_strategy == "end":
            return
        hub.upload_folder(self._stage_student(), self.hub_model_id,
                          f"Training in progress, step {self.state.global_step}", self.args.hub_token,
                          self.args.hub_revision)

    @property
    def student(self) -> nn.Module:
        """The student being trained (unwrapped)."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False).student


# -- helpers ---------------------------------------------------------------------------------------------------
class _DatasetEpoch(TrainerCallback):
    """Tells a train dataset with ``set_epoch`` (the CIFAR pipeline's per-epoch order and augmentations) which epoch
    runs: accelerate's data loader passes it on only for some samplers (not the seedable random one under DDP)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        dataset = self.trainer.train_dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(state.epoch + 1e-9))  # epochs completed (mid-epoch on a resume: the one running)


def _named_datasets(train: Any, evaluation: Any) -> list[tuple[str, Any]]:
    named = [("train", train)]
    named += list(evaluation.items()) if isinstance(evaluation, dict) else [("eval", evaluation)]
    return named


def _checked_batches(loader: DataLoader, channels: int | None, device: torch.device):
    """The loader's batches on ``device``, each checked first (a bad batch is named, not a teacher failure)."""
    for batch in loader:
        check_batch(batch, channels, needs_labels=False)
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _check_dim(side: str, inferred: int, given: int | None) -> None:
    if given is not None and given != inferred:
        raise ValueError(
            f"{side}_feature_dim={given} was given, but the {side}'s features have dim {inferred}. Remove "
            f"{side}_feature_dim, or pick the {side}_feature_module that gives {given}-d features."
        )


def _check_finite_weights(student: nn.Module, diverged: bool) -> None:
    bad = [name for name, tensor in student.state_dict().items()
           if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        why = " The run stopped with a NaN/inf loss." if diverged else ""
        raise FloatingPointError(
            f"The student has NaN/inf weights ({len(bad)} tensors, first {bad[:3]}): saving it would publish a broken "
            f"model.{why} Resume from the last good checkpoint instead, or pass allow_non_finite=True to save it "
            "anyway (e.g. to inspect it)."
        )


def sync_buffers(model: nn.Module) -> None:
    """Copy process 0's buffers (batch-norm running statistics) to every process, so that the model each process
    evaluates and the model process 0 saves are the same one (DDP only syncs buffers at the next forward)."""
    if world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


@contextmanager
def _isolated_rng():
    """Run a block without changing torch's, numpy's or Python's random state (the training run's randomness)."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def _build_mixup(args: DistillationArguments, num_classes: int) -> Any:
    """timm's Mixup / CutMix in batch mode (partner = the reversed batch, one lam per batch), with label smoothing
    folded into the soft targets: applied on the device, to training batches only."""
    if not args.uses_mixup:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, mode="batch", label_smoothing=args.label_smoothing_factor,
                 num_classes=num_classes)


def _mix(mixup: Any, pixels: torch.Tensor, teacher_pixels: torch.Tensor | None, labels: torch.Tensor | None):
    """Mix student (and teacher) images with the same lam and box; the teacher sees the mixed images too."""
    if labels is None or labels.dim() != 1:
        raise ValueError("Mixup / CutMix needs class-index labels (B,) in each batch.")
    if pixels.shape[0] % 2:
        raise ValueError(f"Mixup / CutMix (timm) needs an even batch, got {pixels.shape[0]}: use an even "
                         "per_device_train_batch_size and dataloader_drop_last=True (as DeiT does).")
    channels = pixels.shape[1]
    if teacher_pixels is not None:
        if teacher_pixels.shape[-2:] != pixels.shape[-2:]:
            raise ValueError("Mixup / CutMix with 'teacher_pixel_values' of another size than 'pixel_values' is not "
                             "supported: let the trainer re-normalise the student's inputs for the teacher instead.")
        stacked = torch.cat([pixels, teacher_pixels.to(pixels.dtype)], dim=1)  # one lam / box for both
        mixed, targets = mixup(stacked, labels)
        return mixed[:, :channels], mixed[:, channels:], targets
    mixed, targets = mixup(pixels.clone(), labels)
    return mixed, None, targets
