"""Model card and Hub upload of the distilled student (never the teacher, projector or normalisers).

The card is rendered from ``model_cards/srd_student.md`` with ``huggingface_hub.ModelCard`` / ``ModelCardData``.
It only states numbers that were measured: the student's, the teacher's and their agreement from the same
evaluation entry of the trainer's log history, a from-scratch baseline only when the caller passes a measured one
(with its source), and parameter / MAC counts computed on the run's own models.
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

from .families import ModelAdapter

DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "model_cards" / "srd_student.md"  # link to ../model_cards
HUB_UPLOAD_DIRNAME = "_hub_student"
"""Sub-folder of ``output_dir`` where the student is staged for upload (leading '_': the Trainer ignores it)."""
CARD_TAGS = ("knowledge-distillation", "image-classification", "hf_projkd", "srd")
DISTILLATION_FIELDS = (
    "teacher_model_name_or_path", "feature_loss", "feature_loss_weight", "logsum_exponent", "projector",
    "feature_norm", "logit_loss", "logit_loss_weight", "temperature", "dkd_alpha", "dkd_beta", "ce_weight",
    "label_smoothing_factor", "mixup_alpha", "cutmix_alpha",
)
TRAINING_FIELDS = (
    "optim", "optim_args", "learning_rate", "warmup_steps", "weight_decay", "weight_decay_filter", "max_grad_norm",
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "bf16", "fp16",
    "seed",
)
METHOD_DESCRIPTIONS = {
    "ce": "cross-entropy on the labels only (no teacher: a baseline)",
    "kd": "Hinton knowledge distillation (cross-entropy plus KL divergence to the teacher's softened logits)",
    "dkd": "decoupled knowledge distillation (cross-entropy plus DKD on the teacher's logits)",
    "srd": "cross-entropy and a LogSum loss between batch-normalised projected student features and teacher features",
    "srd+kd": "cross-entropy on the labels, KL divergence to the teacher's logits, and a LogSum loss between "
              "batch-normalised projected student features and teacher features",
    "srd+dkd": "cross-entropy, decoupled KD on the teacher's logits, and a LogSum loss between batch-normalised "
               "projected student features and teacher features",
}


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
    method: str = "srd+kd"
    agreement: dict[str, float] = field(default_factory=dict)
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
        datasets=[info.dataset_id] if is_hub_id(info.dataset_id) else None,
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
        method=info.method,
        method_description=METHOD_DESCRIPTIONS.get(info.method, f"a custom combination of losses ({info.method})"),
        dataset_display=f"`{info.dataset_id}`",
        dataset_id=info.dataset_id,
        dataset_split=info.dataset_split,
        eval_examples=info.eval_examples,
        input_size=info.input_size,
        hf_projkd_version=__version__,
        distillation_head_note=_head_note(info.student_architecture),
        result_rows=[_result_row(r) for r in info.results],
        agreement=info.agreement,
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


def is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not Path(name).exists() and not name.startswith(("/", "."))


def usage_snippet(model_id: str | None, local_dir: str, adapter: ModelAdapter) -> str:
    """How to load the student in its own library (hf_projkd is not needed): from the Hub id once pushed, else from
    its local folder."""
    where = model_id or str(local_dir)
    note = "" if model_id else "  # the local folder; once pushed, its Hub id"
    if adapter.library == "timm":
        source = f"hf-hub:{model_id}" if model_id else f"local-dir:{local_dir}"
        return (
            "import timm\n\n"
            f'model = timm.create_model("{source}", pretrained=True).eval(){note}\n'
            "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))\n"
            "logits = model(transform(image).unsqueeze(0))\n\n"
            "# or with transformers\n"
            "from transformers import AutoModelForImageClassification\n"
            f'model = AutoModelForImageClassification.from_pretrained("{where}")'
        )
    name = type(adapter.model).__name__
    return (
        f"from transformers import AutoImageProcessor, {name}\n\n"
        f'processor = AutoImageProcessor.from_pretrained("{where}"){note}\n'
        f'model = {name}.from_pretrained("{where}").eval()\n'
        'logits = model(**processor(image, return_tensors="pt")).logits'
    )


def last_evaluation(log_history: list[dict[str, Any]], prefix: str = "eval") -> dict[str, Any]:
    """The most recent evaluation entry of the log history that has ``{prefix}_top1`` (empty if none): the student's,
    the teacher's and the agreement numbers of the card all come from this one entry."""
    for entry in reversed(log_history):
        if f"{prefix}_top1" in entry:
            return entry
    return {}


def schedule_description(args: Any) -> str:
    """The learning-rate schedule that actually ran."""
    if args.lr_decay_fractions:
        return (f"step: x{args.lr_decay_rate:g} at {', '.join(f'{f:g}' for f in args.lr_decay_fractions)} of the run"
                f" (after {args.warmup_steps} warmup steps)" if args.warmup_steps else
                f"step: x{args.lr_decay_rate:g} at {', '.join(f'{f:g}' for f in args.lr_decay_fractions)} of the run")
    kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    extra = f" {args.lr_scheduler_kwargs}" if args.lr_scheduler_kwargs else ""
    return f"{kind}{extra}"


def stage_student(adapter: ModelAdapter, folder: Path, processor: Any = None, card: Path | None = None) -> Path:
    """A clean folder with what gets uploaded: student weights + config, image processor, README.md."""
    if folder.exists():
        shutil.rmtree(folder)
    adapter.save(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    if card is not None and card.is_file():
        shutil.copy(card, folder / "README.md")
    return folder


def upload_folder(folder: Path, repo_id: str, commit_message: str, token: str | None, revision: str | None,
                  blocking: bool = True) -> Any:
    return HfApi().upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 token=token, revision=revision, run_as_future=not blocking)
