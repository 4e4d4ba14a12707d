"""Classifiers by name: a pretrained teacher or student from an id, folder or file, or a student from scratch.

``load_image_classifier`` decides the library from the name: ``timm/...`` and ``hf-hub:...`` ids and local folders
whose ``config.json`` has timm's ``architecture`` key go to ``timm.create_model``; a ``.safetensors`` file is a
classic CIFAR-10 ResNet (``models.load_cifar10_resnet``); everything else goes to transformers'
``AutoModelForImageClassification``. Every failure (offline, typo, missing or damaged files) is one ``OSError``
that says what was tried and how to fix it. ``create_student`` builds a randomly initialised student by
architecture name (CIFAR net, DeiT size, timm architecture or transformers config file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    PreTrainedModel,
)

from .checkpointing import check_safetensors_file
from .models import CIFAR_ARCHITECTURES, create_cifar_model, load_cifar10_resnet
from .models.configuration_cifar import normalize_architecture_name

TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DEIT_SIZES: dict[str, dict[str, int]] = {
    # DeiT (Touvron et al. 2021), Table 1: patch 16, 12 layers, MLP ratio 4
    "deit-tiny": {"hidden_size": 192, "num_attention_heads": 3, "intermediate_size": 768},
    "deit-small": {"hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536},
}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")


def is_timm_checkpoint(name_or_path: str) -> bool:
    """True for timm hub ids and for local folders saved in timm's format (config.json with 'architecture')."""
    if name_or_path.startswith(("timm/", "hf-hub:")):
        return True
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except ValueError as error:
            raise ValueError(f"{config} is not valid JSON ({error}): expected the config.json that save_pretrained "
                             "or timm's save_for_hf writes.") from error
        return "architecture" in data and "model_type" not in data
    return False


def load_image_classifier(name_or_path: str | os.PathLike, num_labels: int | None = None, **kwargs: Any) -> nn.Module:
    """A pretrained image classifier from ``name_or_path`` (timm or transformers Hub id, local folder, or a
    CIFAR-10 ResNet ``.safetensors`` file). ``num_labels`` re-initialises the head for that many classes."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or name.endswith(".safetensors") or name.count("/") > 1
    if looks_local and not path.exists():
        raise OSError(
            f"Could not load the model {name!r}: there is no such file or folder (relative to {os.getcwd()}). "
            "Expected a local folder with config.json and model.safetensors, a .safetensors file, or a Hub id "
            "like 'timm/resnet34.tv_in1k'; check the path."
        )
    try:
        if path.is_file():
            check_safetensors_file(path)
            return load_cifar10_resnet(path)
        if path.is_dir():
            _check_folder(path)
        if is_timm_checkpoint(name):
            return _load_timm(name, num_labels, **kwargs)
        extra = {"num_labels": num_labels, "ignore_mismatched_sizes": True} if num_labels else {}
        return AutoModelForImageClassification.from_pretrained(name, **extra, **kwargs)
    except Exception as error:  # one message for every way a load can fail
        raise OSError(_load_failure(name, path, error)) from error


def _load_failure(name: str, path: Path, error: Exception) -> str:
    cause = f"{type(error).__name__}: {error}"
    if path.exists():
        return (f"Could not load the model {name!r}: {cause}\nThe local files are damaged or not a classifier: "
                "re-save or re-download them.")
    # what was tried first: the library's own words ("couldn't connect to huggingface.co") would mislead about a
    # local folder that is simply not there
    local = (f"Could not load the model {name!r}. There is no local folder {name!r} (relative to {os.getcwd()}), "
             "so it was tried as a Hub id. ")
    hub = ("HF_HUB_OFFLINE is set, so Hub ids only load from the local cache: download the model once with network "
           "access, or pass a local path." if _offline() else
           "Check the spelling, your network access to the Hub, and your token for private models.")
    return f"{local}{hub}\nAs a Hub id it failed with {cause}"


def _check_folder(folder: Path) -> None:
    for name in ("model.safetensors",):
        if (folder / name).is_file():
            check_safetensors_file(folder / name)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json: expected a folder written by save_pretrained / timm's save_for_hf "
            f"(config.json + model.safetensors); it holds {sorted(p.name for p in folder.iterdir())[:10]}."
        )


def _load_timm(name_or_path: str, num_labels: int | None, **kwargs: Any) -> nn.Module:
    extra = {"num_classes": num_labels} if num_labels else {}
    if name_or_path.startswith(("timm/", "hf-hub:")):
        hub_id = name_or_path.removeprefix("hf-hub:")
        return timm.create_model(f"hf-hub:{hub_id}", pretrained=True, **extra, **kwargs)
    folder = Path(name_or_path)
    config = json.loads((folder / "config.json").read_text())
    weights = next((folder / f for f in TIMM_WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise FileNotFoundError(
            f"{folder} has no weights: a timm folder needs config.json and one of {TIMM_WEIGHT_FILES}."
        )
    model_args = dict(config.get("model_args", {}))
    if config.get("num_classes") is not None:
        model_args.setdefault("num_classes", config["num_classes"])
    pretrained_cfg = {**config.get("pretrained_cfg", {}), "file": str(weights)}
    if config.get("label_names") and not num_labels:  # timm writes the class names at the root
        pretrained_cfg["label_names"] = list(config["label_names"])
    return timm.create_model(
        config["architecture"], pretrained=True, pretrained_cfg_overlay=pretrained_cfg,
        **{**model_args, **extra}, **kwargs,
    )


# -- students from scratch ---------------------------------------------------------------------------------------
def create_student(
    name: str,
    class_names: list[str],
    image_size: int,
    *,
    image_mean: tuple[float, ...] | None = None,
    image_std: tuple[float, ...] | None = None,
    drop_path_rate: float = 0.0,
    cifar_first: bool = False,
) -> nn.Module:
    """A randomly initialised student for ``class_names`` by architecture name, or a pretrained one with a new head.

    ``name`` is a CIFAR architecture (``resnet8x4``, ``wrn_16_2``, ...), a DeiT size (``deit-tiny``, ``deit-small``:
    transformers ``DeiTForImageClassificationWithTeacher``), a transformers ``config.json`` path, a timm
    architecture (``resnet18``), or else a pretrained id / folder whose head is re-initialised. A name that is both
    a CIFAR and a timm architecture (``resnet50``, ``vgg13``) is the CIFAR one when ``cifar_first`` (the CIFAR
    recipes), else timm's; ``cifar:`` / ``timm:`` prefixes choose explicitly.
    """
    labels = {"num_labels": len(class_names), "id2label": dict(enumerate(class_names)),
              "label2id": {c: i for i, c in enumerate(class_names)}}
    family, _, arch = name.rpartition(":") if name.startswith(("cifar:", "timm:")) else ("", "", name)
    cifar = _cifar_name(arch)
    if family == "cifar" or (not family and cifar and (cifar_first or arch not in timm.list_models())):
        if cifar is None:
            raise ValueError(f"--student {name!r}: {arch!r} is not a CIFAR architecture. CIFAR architectures are "
                             f"{', '.join(CIFAR_ARCHITECTURES)}; for a timm model write timm:{arch}.")
        stats = {"image_mean": image_mean, "image_std": image_std} if image_mean is not None else {}
        return create_cifar_model(cifar, image_size=image_size, **stats, **labels)
    if arch in DEIT_SIZES:
        config = DeiTConfig(image_size=image_size, patch_size=16, num_hidden_layers=12, layer_norm_eps=1e-6,
                            **DEIT_SIZES[arch], **labels)
        return add_stochastic_depth(DeiTForImageClassificationWithTeacher(config), drop_path_rate)
    if arch.endswith(".json"):
        model = _from_config_file(Path(arch), labels, image_size)
        return add_stochastic_depth(model, drop_path_rate) if hasattr(model, "deit") else model
    if family == "timm" or arch in timm.list_models():
        model = timm.create_model(arch, pretrained=False, num_classes=len(class_names), drop_path_rate=drop_path_rate)
        model.pretrained_cfg = {**model.pretrained_cfg, "label_names": list(class_names)}
        return model
    model = load_image_classifier(name, num_labels=len(class_names))
    if isinstance(model, PreTrainedModel):
        model.config.id2label, model.config.label2id = labels["id2label"], labels["label2id"]
    return model


def _cifar_name(name: str) -> str | None:
    try:
        return normalize_architecture_name(name)
    except ValueError:
        return None


def _from_config_file(path: Path, labels: dict[str, Any], image_size: int) -> PreTrainedModel:
    if not path.is_file():
        raise FileNotFoundError(f"--student {path}: no such config file.")
    values = json.loads(path.read_text())
    if "model_type" not in values:
        raise ValueError(f"--student {path} has no 'model_type': expected a transformers config.json. Add the "
                         'model type, e.g. "model_type": "deit" (as save_pretrained writes it).')
    config = AutoConfig.for_model(values.pop("model_type"), **{**values, **labels})
    if getattr(config, "image_size", image_size) != image_size:
        raise ValueError(
            f"--student config has image_size={config.image_size} but --input_size is {image_size}: set them equal."
        )
    if config.model_type == "deit":
        return DeiTForImageClassificationWithTeacher(config)
    return AutoModelForImageClassification.from_config(config)


class _DropPath:
    """Forward hook dropping a residual branch's output per sample with probability ``p`` (scaled by 1 / keep)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not module.training:
            return None
        branch = output[0] if isinstance(output, tuple) else output
        keep = 1.0 - self.p
        mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(keep)
        branch = branch * mask / keep if keep > 0 else branch * 0
        return (branch, *output[1:]) if isinstance(output, tuple) else branch


def add_stochastic_depth(model: PreTrainedModel, rate: float) -> PreTrainedModel:
    """Stochastic depth for transformers DeiT students, which have none (DeiT trains with drop path 0.1).

    The attention and MLP branches of layer i are dropped per sample with probability ``rate * i / (depth - 1)``
    (timm's linear rule). Forward hooks act in training mode only and are not saved: the saved student is a plain
    transformers DeiT.
    """
    if rate <= 0:
        return model
    layers = [m for m in model.modules() if type(m).__name__ == "DeiTLayer"]
    for layer, p in zip(layers, torch.linspace(0, rate, len(layers)).tolist(), strict=True):
        if p > 0:
            layer.attention.register_forward_hook(_DropPath(p))
            layer.mlp.register_forward_hook(_DropPath(p))
    return model
