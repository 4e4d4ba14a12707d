"""``DistillationTrainer``: the transformers ``Trainer`` with a frozen teacher and the SRD losses."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .checkpointing import mark_checkpoint_complete, resolve_resume_checkpoint, unmark_checkpoint
from .config import DistillationArguments
from .distributed import optimize_teacher_call, prepare_teacher
from .features import FeatureExtractor, default_input_size, probe_dims
from .hub import StudentHubMixin
from .loading import load_image_classifier
from .metrics import compute_accuracy
from .modeling import DistillationModel, DistillationOutput, LossSettings
from .serialization import (
    load_distillation_state,
    load_student_weights,
    save_distillation_state,
    save_student,
)
from .validation import (
    NonFiniteLossGuard,
    check_batch,
    check_label_names,
    check_train_dataset,
    probe_failure_message,
    teacher_input_normalizer,
)

LOSS_COMPONENTS = ("loss_ce", "loss_logit", "loss_feature")
NO_DECAY_NAMES = ("cls_token", "dist_token", "distillation_token", "pos_embed", "position_embeddings", "mask_token")


class DistillationTrainer(StudentHubMixin, Trainer):
    """Trains a student from a frozen teacher with CE + logit KD + projector feature loss (SRD).

    Args:
        model: the student, an ``nn.Module`` (timm, transformers or any classifier) or an id / local path.
        teacher_model: the teacher, a module or an id / path; defaults to ``args.teacher_model_name_or_path``.
        args: ``DistillationArguments`` (defaults: the paper's ImageNet CNN setting).
        input_size: (C, H, W) for the dummy forwards that infer feature dims, when the models cannot tell.
        **kwargs: anything ``Trainer`` takes (datasets, collator, callbacks, processing_class, ...).
            ``compute_metrics`` defaults to top-1/top-5 accuracy of the student.

    The trained module is a ``DistillationModel`` (student + projector + normalisers). The teacher is kept out of
    it: frozen, in eval mode, run under ``torch.no_grad`` on the student's device and inside the same autocast.
    ``save_model`` writes only the student in its native format; checkpoints add the projector/normaliser state,
    and ``resume_from_checkpoint`` restores both.
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
        student = load_image_classifier(model) if isinstance(model, str) else model
        teacher = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if teacher is None:
            raise ValueError(
                "No teacher: pass teacher_model=<nn.Module, timm id or transformers id/path> or set "
                "DistillationArguments.teacher_model_name_or_path."
            )
        teacher = load_image_classifier(teacher) if isinstance(teacher, str) else teacher
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_features = FeatureExtractor(self.teacher, args.teacher_feature_module)

        student_extractor = FeatureExtractor(student, args.student_feature_module)
        student_dim, student_classes, student_size = probe_dims(student_extractor, input_size)
        # the teacher sees the student's pixel_values, so probe it at the student's input size
        teacher_dim, teacher_classes, self.teacher_input_size = _probe_teacher(self.teacher_features, student_size)
        self._student_input_size = student_size
        _check_dim("student", student_dim, args.student_feature_dim)
        _check_dim("teacher", teacher_dim, args.teacher_feature_dim)
        if args.uses_teacher_logits and student_classes != teacher_classes:
            raise ValueError(
                f"The student predicts {student_classes} classes but the teacher {teacher_classes}: the "
                f"'{args.logit_loss}' logit loss compares them class by class. Give the student a head with "
                f"{teacher_classes} classes (num_labels={teacher_classes}), use a teacher trained on the same "
                "label set, or set logit_loss='none' to distil features only."
            )
        if args.uses_teacher_logits:
            check_label_names(student, self.teacher)
        check_train_dataset(kwargs.get("train_dataset"), student_classes, args)
        eval_sets = kwargs.get("eval_dataset")
        for name, data in (eval_sets.items() if isinstance(eval_sets, dict) else [("eval", eval_sets)]):
            check_train_dataset(data, student_classes, args, split=name)
        self._teacher_normalizer = teacher_input_normalizer(
            student, self.teacher, args.renormalize_teacher_inputs, kwargs.get("processing_class")
        )
        self._loss_guard = NonFiniteLossGuard()
        distillation_model = DistillationModel(
            student,
            student_dim,
            teacher_dim,
            LossSettings.from_args(args),
            projector=args.projector,
            feature_norm=args.feature_norm,
            extractor=student_extractor,
            sync_feature_norm=args.sync_feature_norm,
        )
        kwargs.setdefault("compute_metrics", compute_accuracy)
        super().__init__(model=distillation_model, args=args, **kwargs)
        self.teacher = prepare_teacher(self.accelerator, self.teacher)  # device, and ZeRO-3 sharding if asked
        self._teacher_call = optimize_teacher_call(
            self.teacher, self.teacher_features, args.teacher_channels_last, args.teacher_compile,
            args.torch_compile_backend, args.torch_compile_mode,
        )
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_steps = 0
        self._saving_checkpoint = False

    # -- loss ----------------------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, DistillationOutput]:
        """Teacher forward (no autograd) + student/projector forward; student only when evaluating."""
        check_batch(inputs)
        pixel_values, labels = inputs["pixel_values"], inputs.get("labels")
        if not model.training:
            outputs = model(pixel_values=pixel_values, labels=labels)
        else:
            teacher = None
            if self.args.uses_teacher_logits or self.args.uses_features:  # CE-only baselines skip the teacher
                teacher = self.teacher_forward(self._teacher_inputs(inputs))
            outputs = model(
                pixel_values=pixel_values,
                labels=labels,
                teacher_logits=teacher.logits if teacher is not None and self.args.uses_teacher_logits else None,
                teacher_features=teacher.features if teacher is not None and self.args.uses_features else None,
            )
            self._accumulate_components(outputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _teacher_inputs(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The batch's ``teacher_pixel_values``, else its ``pixel_values`` re-normalised for the teacher."""
        if inputs.get("teacher_pixel_values") is not None:
            return inputs["teacher_pixel_values"]
        pixel_values = inputs["pixel_values"]
        if self.teacher_input_size != self._student_input_size:
            raise ValueError(
                f"The teacher only runs at {self.teacher_input_size}, the batch's pixel_values are "
                f"{tuple(pixel_values.shape[1:])} and it has no 'teacher_pixel_values': add them to each batch, "
                "prepared with the teacher's transform."
            )
        return self._teacher_normalizer(pixel_values) if self._teacher_normalizer is not None else pixel_values

    @torch.no_grad()
    def teacher_forward(self, pixel_values: torch.Tensor):
        """Teacher logits and features, under the accelerator's autocast: the student's mixed precision.

        The Trainer autocasts only the prepared model's forward, so without this the teacher would run in fp32.
        """
        if self.teacher.training:  # someone called .train() on it: BN running statistics must stay frozen
            self.teacher.eval()
        with self.accelerator.autocast():
            return self._teacher_call(pixel_values)

    # -- logging -------------------------------------------------------------------------------------------
    def _accumulate_components(self, outputs: DistillationOutput) -> None:
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

    # -- optimizer -----------------------------------------------------------------------------------------
    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Weight decay by shape, not by name: ``all`` parameters (CNN protocols) or ``no_1d`` (timm/DeiT)."""
        if self.args.weight_decay_filter == "transformers":
            return super().get_decay_parameter_names(model)
        names = [name for name, _ in model.named_parameters()]
        if self.args.weight_decay_filter == "all":
            return names
        parameters = dict(model.named_parameters())
        return [
            name for name in names
            if parameters[name].ndim > 1 and not name.split(".")[-1].endswith(NO_DECAY_NAMES)
        ]

    # -- saving and resuming -------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Writes the student alone, natively; inside a checkpoint also the projector/normaliser state."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        unwrapped = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        save_student(unwrapped.student, output_dir)
        if self._saving_checkpoint and unwrapped.projector is not None:
            save_distillation_state(unwrapped.distillation_state_dict(), output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _check_finite_loss(self) -> None:
        """Stops every process together if the loss went NaN/inf on any of them since the last check."""
        self._loss_guard.check(
            self.state.global_step, self.args.output_dir, lambda flags: self.accelerator.reduce(flags, "sum")
        )

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest COMPLETE checkpoint, and a path to an
        incomplete (killed mid-save) or truncated one is refused with the name of the one to use instead."""
        resume = resolve_resume_checkpoint(resume_from_checkpoint, self.args.output_dir)
        return super().train(resume_from_checkpoint=resume, **kwargs)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Refuses to save a diverged model; marks the checkpoint complete last, and only then rotates old ones,
        so a kill at any moment leaves the previous checkpoint intact and resumable."""
        self._check_finite_loss()
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            unmark_checkpoint(folder)
        self._saving_checkpoint = True
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving_checkpoint = False
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every process's files (RNG states) are on disk
        if self.args.should_save:
            mark_checkpoint_complete(folder, self.state.global_step)
            rotate_checkpoints(
                output_dir=os.path.dirname(folder),
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_student_weights(unwrapped.student, resume_from_checkpoint)
        if unwrapped.projector is not None:
            unwrapped.load_distillation_state_dict(load_distillation_state(resume_from_checkpoint))

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    @property
    def student(self) -> nn.Module:
        """The student being trained (unwrapped)."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False).student


def _probe_teacher(
    extractor: FeatureExtractor, student_size: tuple[int, int, int]
) -> tuple[int, int, tuple[int, int, int]]:
    """Teacher (dim, classes, input size): at the student's input size, else at the teacher's own size (then
    batches must carry ``teacher_pixel_values``), else an error saying how to give the teacher its inputs."""
    try:
        return probe_dims(extractor, student_size)
    except ValueError as error:
        own_size = default_input_size(extractor.model)
        if own_size is None or tuple(own_size) == tuple(student_size):
            raise ValueError(probe_failure_message(extractor.model, student_size, own_size, error)) from error
        try:
            return probe_dims(extractor, own_size)
        except ValueError:
            raise ValueError(probe_failure_message(extractor.model, student_size, own_size, error)) from error


def _check_dim(side: str, inferred: int, given: int | None) -> None:
    if given is not None and given != inferred:
        raise ValueError(
            f"{side}_feature_dim={given} was given, but the {side}'s features have dim {inferred} (inferred by a "
            f"dummy forward). Remove {side}_feature_dim, or pick the {side}_feature_module that gives {given}-d "
            "features."
        )

