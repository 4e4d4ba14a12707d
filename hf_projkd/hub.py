"""Model card and Hub push of the distilled student (never the teacher, projector or normalisers).

The card is rendered from ``model_cards/srd_student.md`` with ``huggingface_hub.ModelCard`` / ``ModelCardData``.
It only states numbers that were measured: the student's eval metrics from the trainer's log history, the
teacher's and the from-scratch baseline's only when the caller passes measured ones (with their source), and
parameter / MAC counts computed on the run's own models.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .features import default_input_size, is_timm_model
from .serialization import save_student

DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "srd_student.md"  # link to ../model_cards
HUB_UPLOAD_DIRNAME = "_hub_student"
"""Sub-folder of ``output_dir`` where the student is staged for upload (leading '_': the Trainer ignores it)."""
CARD_TAGS = ("knowledge-distillation", "image-classification", "hf_projkd", "srd")
DISTILLATION_FIELDS = (
    "teacher_model_name_or_path", "feature_loss", "feature_loss_weight", "logsum_exponent", "projector",
    "feature_norm", "logit_loss", "logit_loss_weight", "temperature", "dkd_alpha", "dkd_beta", "ce_weight",
    "label_smoothing_factor",
)
TRAINING_FIELDS = (
    "optim", "optim_args", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
    "weight_decay", "weight_decay_filter", "max_grad_norm", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "fp16", "seed",
)


# -- measurements ----------------------------------------------------------------------------------------------
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch counts the CUDA attention kernels but not the CPU one: without this, ViTs on CPU lose their attention FLOPs
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward on one image of ``input_size`` (FLOPs counted by torch, halved)."""
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
            model(torch.zeros(1, *input_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


# -- card content ----------------------------------------------------------------------------------------------
@dataclass
class MeasuredResult:
    """Accuracy (%) of one model and where the number comes from (shown in the card's 'source' column)."""

    name: str
    top1: float | None
    top5: float | None
    source: str


@dataclass
class CardInfo:
    """Everything the card says. Only measured numbers go in ``results``; unknown ones stay out."""

    model_id: str
    library_name: str
    student_architecture: str
    teacher_name: str
    dataset_id: str
    dataset_split: str
    input_size: int
    results: list[MeasuredResult]
    hyperparameters: dict[str, Any]
    costs: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (parameters, MACs)
    eval_examples: int | None = None
    usage_snippet: str = ""
    license: str | None = None
    tags: list[str] = field(default_factory=list)


def build_model_card(info: CardInfo, template_path: str | Path | None = None) -> ModelCard:
    """Render the card (metadata + body) from the template."""
    template_path = Path(template_path) if template_path is not None else DEFAULT_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(
            f"Model card template {template_path} not found. It ships with the package (hf_projkd/model_cards, a "
            "link to the repository's model_cards/): reinstall hf_projkd, or pass template_path=<a card template>."
        )
    from . import __version__

    student = next((r for r in info.results if r.name.startswith("student")), None)
    card_data = ModelCardData(
        library_name=info.library_name,
        pipeline_tag="image-classification",
        tags=list(dict.fromkeys([*CARD_TAGS, *(("timm",) if info.library_name == "timm" else ()), *info.tags])),
        datasets=[info.dataset_id] if _is_hub_id(info.dataset_id) else None,
        license=info.license,
        model_name=info.model_id.split("/")[-1],
        eval_results=_eval_results(info, student) or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_title=info.model_id.split("/")[-1],
        student_architecture=info.student_architecture,
        library_name=info.library_name,
        teacher_name=f"`{info.teacher_name}`",
        dataset_display=f"`{info.dataset_id}`",
        dataset_id=info.dataset_id,
        dataset_split=info.dataset_split,
        eval_examples=info.eval_examples,
        input_size=info.input_size,
        hf_projkd_version=__version__,
        distillation_head_note=_head_note(info.student_architecture),
        result_rows=[_result_row(r) for r in info.results],
        cost_rows=[
            {"name": name, "params": f"{params / 1e6:.2f}", "macs": f"{macs / 1e9:.3f}"}
            for name, (params, macs) in info.costs.items()
        ],
        hyperparameters=sorted(info.hyperparameters.items()),
        usage_snippet=info.usage_snippet,
    )


def _eval_results(info: CardInfo, student: MeasuredResult | None) -> list[EvalResult]:
    if student is None:
        return []
    results = []
    for metric, value, name in (("accuracy", student.top1, "Top-1 accuracy (%)"),
                                ("top_5_accuracy", student.top5, "Top-5 accuracy (%)")):
        if value is not None:
            results.append(EvalResult(
                task_type="image-classification", dataset_type=info.dataset_id, dataset_name=info.dataset_id,
                dataset_split=info.dataset_split, metric_type=metric, metric_name=name,
                metric_value=round(float(value), 2),
            ))
    return results


def _result_row(result: MeasuredResult) -> dict[str, str]:
    def show(value: float | None) -> str:
        return "not measured" if value is None else f"{value:.2f}"

    return {"name": result.name, "top1": show(result.top1), "top5": show(result.top5), "source": result.source}


def _head_note(architecture: str) -> str:
    if "WithTeacher" in architecture:
        return ("Its logits are the average of the class-token and distillation-token heads, as in DeiT; the "
                "distillation head was trained to match the teacher.")
    return ""


def _is_hub_id(name: str) -> bool:
    return "/" in name and not Path(name).exists() and not name.startswith(("/", "."))


def usage_snippet(model_id: str, student: nn.Module) -> str:
    """How to load the pushed student, in its own library (hf_projkd is not needed)."""
    if is_timm_model(student):
        return (
            "import timm\n\n"
            f'model = timm.create_model("hf-hub:{model_id}", pretrained=True).eval()\n'
            "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))\n"
            "logits = model(transform(image).unsqueeze(0))\n\n"
            "# or with transformers\n"
            "from transformers import AutoModelForImageClassification\n"
            f'model = AutoModelForImageClassification.from_pretrained("{model_id}")'
        )
    name = type(student).__name__
    return (
        f"from transformers import AutoImageProcessor, {name}\n\n"
        f'processor = AutoImageProcessor.from_pretrained("{model_id}")\n'
        f'model = {name}.from_pretrained("{model_id}").eval()\n'
        'logits = model(**processor(image, return_tensors="pt")).logits'
    )


def architecture_name(model: nn.Module) -> str:
    """timm's architecture name (``resnet18``), else the class name (``DeiTForImageClassificationWithTeacher``)."""
    if is_timm_model(model):
        return str(model.pretrained_cfg.get("architecture", type(model).__name__))
    return type(model).__name__


def last_eval_metrics(log_history: list[dict[str, Any]], prefix: str = "eval") -> dict[str, Any]:
    """The most recent ``{prefix}_top1`` / ``{prefix}_top5`` the trainer logged and the step it was logged at
    (empty if it never evaluated)."""
    for entry in reversed(log_history):
        if f"{prefix}_top1" in entry:
            return {"top1": entry[f"{prefix}_top1"], "top5": entry.get(f"{prefix}_top5"), "step": entry.get("step")}
    return {}


# -- the trainer side ------------------------------------------------------------------------------------------
class StudentHubMixin:
    """``Trainer`` mixin: ``create_model_card`` writes the SRD card; pushes upload the student folder only.

    ``model_card_context`` holds what the trainer cannot know itself: ``dataset`` (id), ``dataset_split``,
    ``teacher_result`` / ``baseline_result`` (``MeasuredResult``, measured elsewhere in the run),
    ``extra_hyperparameters`` (e.g. augmentation), ``license``. Keyword arguments of ``create_model_card`` /
    ``push_to_hub`` override it.
    """

    model_card_context: dict[str, Any]

    def _card_context(self) -> dict[str, Any]:
        if not hasattr(self, "model_card_context"):
            self.model_card_context = {}
        return self.model_card_context

    def card_info(self, **overrides: Any) -> CardInfo:
        context = {**self._card_context(), **{k: v for k, v in overrides.items() if v is not None}}
        args = self.args
        student, teacher = self.student, self.teacher
        size = default_input_size(student) or (3, 224, 224)
        model_id = self.hub_model_id or args.hub_model_id or Path(args.output_dir).name
        measured = last_eval_metrics(self.state.log_history)
        dataset_id = str(context.get("dataset") or "unknown")
        results = []
        if measured:
            results.append(MeasuredResult(
                "student (this model)", measured.get("top1"), measured.get("top5"),
                f"evaluated by this run after step {measured.get('step')} of {self.state.global_step}",
            ))
        for key in ("teacher_result", "baseline_result"):
            if context.get(key) is not None:
                results.append(context[key])
        teacher_name = args.teacher_model_name_or_path or type(teacher).__name__
        hyperparameters = {name: getattr(args, name) for name in (*DISTILLATION_FIELDS, *TRAINING_FIELDS)}
        hyperparameters["teacher_model_name_or_path"] = teacher_name
        hyperparameters["total_train_batch_size"] = (
            args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        )
        hyperparameters["trained_steps"] = self.state.global_step
        hyperparameters.update(context.get("extra_hyperparameters", {}))
        return CardInfo(
            model_id=model_id,
            library_name="timm" if is_timm_model(student) else "transformers",
            student_architecture=architecture_name(student),
            teacher_name=teacher_name,
            dataset_id=dataset_id,
            dataset_split=str(context.get("dataset_split") or "unknown"),
            input_size=size[-1],
            results=results,
            hyperparameters={k: getattr(v, "value", v) for k, v in hyperparameters.items() if v is not None},
            costs={
                f"student ({architecture_name(student)})": (count_parameters(student), count_macs(student, size)),
                f"teacher ({teacher_name})": (
                    count_parameters(teacher), count_macs(teacher, getattr(self, "teacher_input_size", size))
                ),
            },
            eval_examples=context.get("eval_examples"),
            usage_snippet=usage_snippet(model_id, student),
            license=context.get("license"),
        )

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write ``README.md`` (the SRD card) into ``output_dir``.

        ``dataset``, ``tags``, ``license``, ``dataset_split``, ``teacher_result``, ``baseline_result`` and
        ``eval_examples`` override ``model_card_context``; ``model_name`` ("user/name") sets the card's model id.
        The other ``Trainer.create_model_card`` arguments (language, tasks, finetuned_from, ...) do not apply
        to a student trained from scratch on images and are ignored.
        """
        if not self.is_world_process_zero():
            return
        known = ("dataset_split", "teacher_result", "baseline_result", "license", "eval_examples")
        dataset = dataset[0] if isinstance(dataset, list) and dataset else dataset
        info = self.card_info(dataset=dataset, **{k: kwargs.get(k) for k in known})
        if model_name and "/" in model_name:
            info.model_id = model_name
        info.tags = [tags] if isinstance(tags, str) else list(tags or [])
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        build_model_card(info).save(Path(self.args.output_dir) / "README.md")

    def stage_student_for_hub(self) -> Path:
        """A clean folder with what gets uploaded: student weights + config, image processor, README.md."""
        folder = Path(self.args.output_dir) / HUB_UPLOAD_DIRNAME
        if folder.exists():
            shutil.rmtree(folder)
        save_student(self.student, folder)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(folder)
        card = Path(self.args.output_dir) / "README.md"
        if card.is_file():
            shutil.copy(card, folder / "README.md")
        return folder

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **card_kwargs: Any,
    ) -> Any:
        """Write the card, stage the student alone and upload that folder to ``hub_model_id``."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        if not self.is_world_process_zero():
            return None
        self.create_model_card(**card_kwargs)
        folder = self.stage_student_for_hub()
        self._finish_current_push()
        return HfApi().upload_folder(
            repo_id=self.hub_model_id,
            folder_path=str(folder),
            commit_message=commit_message,
            token=token,
            run_as_future=not blocking,
            revision=revision if revision is not None else self.args.hub_revision,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Pushes during training upload the current student only; checkpoint folders (which hold the projector
        state) are never uploaded, whatever ``hub_strategy`` says."""
        if not self.is_world_process_zero() or self.args.hub_strategy == "end":
            return
        folder = self.stage_student_for_hub()
        HfApi().upload_folder(
            repo_id=self.hub_model_id,
            folder_path=str(folder),
            commit_message=f"Training in progress, step {self.state.global_step}",
            token=self.args.hub_token,
            revision=self.args.hub_revision,
        )
