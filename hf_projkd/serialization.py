"""Save the student in its native, loadable format; save and restore the projector/normaliser state.

``save_student`` writes only the student: ``save_pretrained`` for transformers models, timm's Hub format
(config.json + model.safetensors) for timm models, so that ``from_pretrained`` /
``timm.create_model("hf-hub:...")`` load it without hf_projkd. Checkpoints add ``DISTILLATION_STATE_FILE``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf
from torch import nn
from transformers import PreTrainedModel

from .features import is_timm_model

STUDENT_WEIGHTS_FILE = "model.safetensors"
STUDENT_WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
DISTILLATION_STATE_FILE = "distillation_state.safetensors"


def save_student(student: nn.Module, output_dir: str | os.PathLike) -> None:
    """Write ``student`` alone to ``output_dir`` in the format its own library loads."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(student, PreTrainedModel):
        student.save_pretrained(output_dir)
    elif is_timm_model(student):
        _save_timm(student, output_dir)
    else:
        save_file(_contiguous(student.state_dict()), output_dir / STUDENT_WEIGHTS_FILE, metadata={"format": "pt"})


def _save_timm(student: nn.Module, output_dir: Path) -> None:
    """timm's Hub format, minus ``model_args.num_classes``: the root ``num_classes`` already says it, and
    transformers' ``TimmWrapperForImageClassification`` fails on the duplicate ("multiple values for num_classes").
    """
    save_for_hf(student, str(output_dir), safe_serialization=True)
    config_path = output_dir / "config.json"
    config = json.loads(config_path.read_text())
    config.get("model_args", {}).pop("num_classes", None)
    config_path.write_text(json.dumps(config, indent=2))


def load_student_weights(student: nn.Module, folder: str | os.PathLike) -> None:
    """Load weights written by ``save_student`` back into ``student`` (strict: every key must match)."""
    folder = Path(folder)
    weights = folder / STUDENT_WEIGHTS_FILE
    if not weights.is_file() and not (folder / STUDENT_WEIGHTS_INDEX_FILE).is_file():
        raise FileNotFoundError(
            f"No student weights in {folder}: expected {STUDENT_WEIGHTS_FILE} (or a sharded index). Is this a "
            "checkpoint folder written by DistillationTrainer (output_dir/checkpoint-<step>)?"
        )
    if isinstance(student, PreTrainedModel):
        # transformers may rename keys on save (v5 checkpoint conversion) and shard: let it read its own files
        if weights.is_file():
            read_safetensors(weights)  # a clear error for a truncated file, before transformers' own
        reloaded = type(student).from_pretrained(folder, config=student.config)
        student.load_state_dict(reloaded.state_dict(), strict=True)
        return
    student.load_state_dict(read_safetensors(weights), strict=True)


def save_distillation_state(state: dict[str, torch.Tensor], folder: str | os.PathLike) -> None:
    save_file(_contiguous(state), Path(folder) / DISTILLATION_STATE_FILE, metadata={"format": "pt"})


def load_distillation_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(folder) / DISTILLATION_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the checkpoint has no projector/normaliser state, so resuming would restart the "
            "projector from scratch. Resume from a checkpoint written by DistillationTrainer."
        )
    return read_safetensors(path)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """``safetensors.load_file`` with an error that names the file when it is truncated or corrupt."""
    try:
        return load_file(path)
    except Exception as error:
        raise OSError(
            f"{path} is truncated or corrupt ({error}). It was probably being written when the run was killed: "
            "resume from the previous checkpoint folder instead."
        ) from error


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}
