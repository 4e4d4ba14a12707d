"""Load a teacher or student classifier from a timm id, a transformers id, or a local folder.

Which library loads it is decided from the name: ``timm/...`` and ``hf-hub:...`` ids and local folders whose
``config.json`` has timm's ``architecture`` key go to ``timm.create_model``; everything else to transformers'
``AutoModelForImageClassification``. Failures (offline, typo, missing files) raise one error that says what
was tried and how to fix it, instead of a library traceback or a hang on the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import timm
from torch import nn
from transformers import AutoModelForImageClassification


def is_timm_checkpoint(name_or_path: str) -> bool:
    """True for timm hub ids and for local folders saved in timm's format (config.json with 'architecture')."""
    if name_or_path.startswith(("timm/", "hf-hub:")):
        return True
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        return "architecture" in data and "model_type" not in data
    return False


def load_image_classifier(name_or_path: str, num_labels: int | None = None, **kwargs: object) -> nn.Module:
    """A pretrained image classifier from ``name_or_path`` (timm or transformers, Hub id or local folder).

    ``num_labels`` re-initialises the head for that many classes (students fine-tuned on a new label set).
    """
    if name_or_path.startswith((".", "/", "~")) and not Path(name_or_path).expanduser().is_dir():
        raise OSError(
            f"Could not load the model {name_or_path!r}: there is no such folder (relative to {os.getcwd()}). "
            "Expected a local folder with config.json and model.safetensors; check the path."
        )
    try:
        if is_timm_checkpoint(name_or_path):
            return _load_timm(name_or_path, num_labels, **kwargs)
        extra = {"num_labels": num_labels, "ignore_mismatched_sizes": True} if num_labels else {}
        return AutoModelForImageClassification.from_pretrained(name_or_path, **extra, **kwargs)
    except Exception as error:  # one message for every way a load can fail
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise OSError(
            f"Could not load the model {name_or_path!r}: {type(error).__name__}: {error}\n"
            f"Expected a local folder (with config.json and model.safetensors), a timm id like "
            f"'timm/resnet34.tv_in1k', or a transformers id like 'facebook/deit-tiny-patch16-224'. "
            + ("HF_HUB_OFFLINE is set, so Hub ids only load from the local cache: download the model once "
               "with network access, or pass a local path." if offline else
               "Check the spelling, your network access to the Hub, and your token for private models.")
        ) from error


def _load_timm(name_or_path: str, num_labels: int | None, **kwargs: object) -> nn.Module:
    extra = {"num_classes": num_labels} if num_labels else {}
    if name_or_path.startswith(("timm/", "hf-hub:")):
        hub_id = name_or_path.removeprefix("hf-hub:")
        return timm.create_model(f"hf-hub:{hub_id}", pretrained=True, **extra, **kwargs)
    folder = Path(name_or_path)
    config = json.loads((folder / "config.json").read_text())
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: a timm folder needs config.json and model.safetensors.")
    model_args = dict(config.get("model_args", {}))
    if config.get("num_classes") is not None:
        model_args.setdefault("num_classes", config["num_classes"])
    return timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay={**config.get("pretrained_cfg", {}), "file": str(weights)},
        **{**model_args, **extra},
        **kwargs,
    )
