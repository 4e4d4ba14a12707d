"""Probe: bad inputs and faults through the Python API and the recipe command lines, each classified automatically.

    python benchmarks/bad_inputs_probe.py [--only SUBSTRING] [--output benchmarks/results/bad_inputs_probe.md]

Every case runs in isolation (a fresh temporary folder, its own try/except; four of them in a subprocess) on tiny
random models and generated data (plus 96 real CIFAR-10 images when ../shared is present), on the CPU, offline.

Classes (decided by code, from the case's rule):

- CLEAR: an error or WARNING whose message matches the case's three patterns: what was EXPECTED, what was FOUND and
  how to FIX it. For a choice among named values or a numeric range, the valid values count as both expected and
  fix; for a command-line usage error, argparse's usage line is the expected form.
- CORRECT: no error, and the case's check of the result passed (e.g. the run resumed from the right checkpoint).
- WARNING: a warning was logged, but it misses a pattern.
- UNCLEAR: an error raised by hf_projkd or a recipe that misses a pattern.
- RAW: an error raised inside a library (torch, transformers, datasets, ...) that misses a pattern.
- SILENT: no error and no warning, but a wrong result (or an error was expected and none came).
- DATA LOSS: a checkpoint that was intact before the case is missing or fails its checksums afterwards, or a saved
  model holds NaN/inf weights (checked after every case that writes checkpoints or models).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from datasets import ClassLabel, Dataset, Features  # noqa: E402
from datasets import Image as ImageFeature  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import TrainingArguments, ViTConfig, ViTForImageClassification  # noqa: E402

import hf_projkd.trainer as trainer_module  # noqa: E402
from hf_projkd import (  # noqa: E402
    DistillationArguments,
    DistillationTrainer,
    ModelFeatures,
    adapter_for,
    create_student,
    load_image_classifier,
)
from hf_projkd.checkpointing import checkpoint_problem, mark_checkpoint_complete  # noqa: E402
from hf_projkd.data import decode_image_dataset, load_image_dataset, resolve_columns  # noqa: E402
from hf_projkd.data.cifar import CifarCollator, load_decoded_splits, random_crop_flip  # noqa: E402
from hf_projkd.data.device_images import DeviceImageCollator, read_encoded  # noqa: E402
from hf_projkd.data.imagenet import (  # noqa: E402
    ImageNetDataArguments,
    RepeatedAugmentationSampler,
    build_train_transform,
    load_imagenet,
)

SHARED = ROOT.parent / "shared"
CIFAR10 = SHARED / "data" / "cifar10-jpeg"
RESNET20 = SHARED / "weights" / "cifar10-resnet" / "cifar10_resnet20.safetensors"
C, SIZE = 5, 32
CLASSES = ["ant", "bee", "cat", "dog", "eel"]
OURS = (str(ROOT / "hf_projkd"), str(ROOT / "recipes"))


# -- the cases ---------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    how: str
    run: Callable[[Path], Any]
    expect: str  # "error", "warning" or "correct"
    rule: tuple[str, str, str] = ()  # regexes: what was expected, what was found, how to fix it
    verify: Callable[[Any, Path], str | None] | None = None  # None when the result is right, else what is wrong
    intact: Callable[[Path], str | None] | None = None  # None when no data was lost, else what was
    group: str = ""


CASES: list[Case] = []
_GROUP = [""]


def group(name: str) -> None:
    _GROUP[0] = name


def case(name: str, how: str, expect: str = "error", rule: tuple[str, str, str] = (), verify=None, intact=None):
    def register(function: Callable[[Path], Any]) -> Callable[[Path], Any]:
        CASES.append(Case(name, how, function, expect, rule, verify, intact, _GROUP[0]))
        return function
    return register


def error_case(name: str, how: str, run: Callable[[Path], Any], expected: str, found: str, fix: str,
               intact=None) -> None:
    """A case whose right outcome is an error (or a WARNING) matching the three patterns."""
    CASES.append(Case(name, how, run, "error", (expected, found, fix), None, intact, _GROUP[0]))


# -- tiny models and data ------------------------------------------------------------------------------------------
def tiny_vit(num_labels: int = C, seed: int = 0, layers: int = 2) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(
        image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=64, num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def tiny_timm_vit(num_classes: int = C, seed: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, img_size=SIZE, patch_size=8, depth=2,
                             embed_dim=48, num_heads=2, pretrained=False)


def tiny_timm_resnet(num_classes: int = C, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=num_classes, pretrained=False)


def named(model: nn.Module, names: list[str]) -> nn.Module:
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    return model


def images(n: int = 16, pixels: Any = None, labels: Any = None, seed: int = 0, **columns: Any) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, SIZE, SIZE, generator=g) if pixels is None else pixels
    labels = torch.randint(0, C, (n,), generator=g) if labels is None else labels
    data = {"pixel_values": pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels,
            "labels": labels.numpy() if isinstance(labels, torch.Tensor) else labels, **columns}
    return Dataset.from_dict({k: v for k, v in data.items() if v is not None}).with_format("torch")


def args(output_dir: Path, **overrides: Any) -> DistillationArguments:
    values = dict(output_dir=str(output_dir), use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
                  disable_tqdm=True, seed=0, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                  learning_rate=1e-3, max_steps=2, teacher_check="off", dataloader_pin_memory=False)
    values.update(overrides)
    return DistillationArguments(**values)


def trainer(output_dir: Path, student: nn.Module | None = None, teacher: nn.Module | None = None,
            data: Dataset | None = None, **overrides: Any) -> DistillationTrainer:
    return DistillationTrainer(student if student is not None else tiny_vit(),
                               teacher if teacher is not None else tiny_timm_vit(), args(output_dir, **overrides),
                               train_dataset=data if data is not None else images())


def train(output_dir: Path, **kwargs: Any) -> DistillationTrainer:
    run = trainer(output_dir, **kwargs)
    run.train()
    return run


class BrightnessTeacher(nn.Module):
    """Right by construction: class k is the k-th brightness band of the raw image, read after undoing ITS input
    normalisation (mean 0.2/0.3/0.4, std 0.3/0.2/0.25): 100 % top-1 when fed as it expects."""

    stats = ((0.2, 0.3, 0.4), (0.3, 0.2, 0.25))

    def __init__(self, names: list[str] | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(self.stats[0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.stats[1]).view(1, 3, 1, 1))
        self.classifier = nn.Linear(C, C)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.eye(C))
            self.classifier.bias.zero_()
        self.config = SimpleNamespace(image_mean=list(self.stats[0]), image_std=list(self.stats[1]), num_labels=C,
                                      id2label=dict(enumerate(names)) if names else None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        level = (pixel_values * self.std + self.mean).mean(dim=(1, 2, 3))
        return self.classifier(-(((level[:, None] - (torch.arange(C) + 0.5) / C) * 20) ** 2))


HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def brightness_images(n: int = 40, stats=HALF, permutation: list[int] | None = None) -> Dataset:
    g = torch.Generator().manual_seed(0)
    classes = torch.arange(n) % C
    raw = (classes.float() + 0.5)[:, None, None, None] / C + (torch.rand(n, 3, SIZE, SIZE, generator=g) - 0.5) * 0.1
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in stats)
    labels = classes if permutation is None else torch.tensor(permutation)[classes]
    return images(n, (raw - mean) / std, labels)


def declaring(model: nn.Module, stats=HALF) -> nn.Module:
    model.config.image_mean, model.config.image_std = list(stats[0]), list(stats[1])
    return model


def teacher_check_run(output_dir: Path, student: nn.Module, data: Dataset, teacher: nn.Module | None = None,
                      mode: str = "warn") -> DistillationTrainer:
    run = trainer(output_dir, student=student, teacher=teacher or BrightnessTeacher(), data=data, teacher_check=mode,
                  max_steps=1)
    run.train()
    return run


# -- shared fixtures (built once, copied per case) -----------------------------------------------------------------
class Fixtures:
    """Things several cases start from, built on first use in the probe's scratch folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, Path] = {}

    def _once(self, name: str, build: Callable[[Path], None]) -> Path:
        if name not in self._cache:
            path = self.root / "fixtures" / name
            build(path)
            self._cache[name] = path
        return self._cache[name]

    def run_with_checkpoints(self) -> Path:
        """A 2-step run with checkpoint-1 and checkpoint-2 (tiny ViT student, tiny timm ViT teacher)."""
        return self._once("run", lambda path: train(path, save_strategy="steps", save_steps=1))

    def copy_of_run(self, output_dir: Path) -> Path:
        shutil.copytree(self.run_with_checkpoints(), output_dir, dirs_exist_ok=True)
        return output_dir

    def timm_teacher_folder(self) -> Path:
        return self._once("timm_teacher", lambda path: adapter_for(tiny_timm_resnet()).save(path))

    def image_parquet(self) -> Path:
        """5 classes, 36x36 RGB JPEGs: train 8, validation 5 (an ImageNet-style dataset)."""
        def build(path: Path) -> None:
            path.mkdir(parents=True)
            rng = np.random.default_rng(0)
            features = Features({"image": ImageFeature(), "label": ClassLabel(names=CLASSES)})
            for split, n in (("train", 8), ("validation", 5), ("test", 5)):
                data = [Image.fromarray(rng.integers(0, 255, (36, 36, 3)).astype("uint8")) for _ in range(n)]
                Dataset.from_dict({"image": data, "label": [i % C for i in range(n)]}, features=features).to_parquet(
                    str(path / f"{split}-00000-of-00001.parquet"))
        return self._once("image_parquet", build)

    def cifar_subset(self) -> Path:
        """64 train and 32 test images of the real CIFAR-10 (../shared), else generated 32x32 images."""
        def build(path: Path) -> None:
            path.mkdir(parents=True)
            if CIFAR10.is_dir():
                splits = load_image_dataset(str(CIFAR10))
                for split, n in (("train", 64), ("test", 32)):
                    splits[split].select(range(n)).to_parquet(str(path / f"{split}-00000-of-00001.parquet"))
                return
            rng = np.random.default_rng(0)
            names = [f"class{i}" for i in range(10)]
            features = Features({"img": ImageFeature(), "label": ClassLabel(names=names)})
            for split, n in (("train", 64), ("test", 32)):
                data = [Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype("uint8")) for _ in range(n)]
                Dataset.from_dict({"img": data, "label": [i % 10 for i in range(n)]}, features=features).to_parquet(
                    str(path / f"{split}-00000-of-00001.parquet"))
        return self._once("cifar_subset", build)

    def cifar_teacher(self) -> Path:
        if RESNET20.is_file():
            return RESNET20
        return self._once("cifar_teacher", lambda path: create_student(
            "resnet20", [f"class{i}" for i in range(10)], 32, cifar_first=True).save_pretrained(path))


FIX: Fixtures


# -- checks ----------------------------------------------------------------------------------------------------------
def checkpoints_intact(*names: str) -> Callable[[Path], str | None]:
    def check(output_dir: Path) -> str | None:
        for name in names:
            problem = checkpoint_problem(output_dir / name)
            if problem is not None:
                return problem
        return None
    return check


def nothing_saved(output_dir: Path) -> str | None:
    """A refused run must not have written a model or a checkpoint."""
    written = [p.name for p in output_dir.glob("*") if p.name.startswith("checkpoint-")
               or p.name == "model.safetensors"]
    return f"wrote {written}" if written else None


def finite_model_files(output_dir: Path) -> str | None:
    for path in output_dir.rglob("model.safetensors"):
        bad = [k for k, v in load_file(path).items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            return f"{path} holds NaN/inf weights ({bad[:2]})"
    return None


def logged_steps(run: DistillationTrainer) -> list[int]:
    return [e["step"] for e in run.state.log_history if "loss" in e]


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zeros":
        path.write_bytes(bytes(len(data)))
    elif how == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes())
    else:
        path.write_bytes(how.encode())


def resume(output_dir: Path, checkpoint: str | bool = True, **overrides: Any) -> DistillationTrainer:
    """Resume the fixture run (same models) for one more step."""
    models = {k: overrides.pop(k) for k in ("student", "teacher") if k in overrides}
    run = trainer(output_dir, **models, max_steps=3, **overrides)
    run.train(resume_from_checkpoint=checkpoint)
    return run


# ======================================================================================================================
# 1. arguments
# ======================================================================================================================
group("arguments")


def _arguments(**values: Any) -> Callable[[Path], Any]:
    return lambda tmp: DistillationArguments(output_dir=str(tmp), use_cpu=True, **values)


for _field, _value, _expected, _fix in [
    ("ce_weight", -0.5, r">= 0", r"Use 0 to switch a term off"),
    ("dkd_beta", -8.0, r">= 0", r"Use 0 to switch a term off"),
    ("mixup_alpha", -0.8, r">= 0", r"Use 0 to switch a term off"),
    ("temperature", 0.0, r"> 0", r"Set a positive value"),
    ("logsum_exponent", -4.0, r"> 0", r"Set a positive value"),
    ("lr_decay_rate", 0.0, r"> 0", r"Set a positive value"),
]:
    error_case(f"{_field}={_value}", f"DistillationArguments({_field}={_value})", _arguments(**{_field: _value}),
               _expected, re.escape(f"got {_value}"), _fix)

for _field, _value in [("feature_loss", "cosine"), ("projector", "conv"), ("feature_norm", "group"),
                       ("logit_loss", "ce"), ("weight_decay_filter", "bias"), ("teacher_check", "maybe"),
                       ("teacher_dtype", "int8")]:
    error_case(f"{_field}={_value!r}", f"DistillationArguments({_field}={_value!r})", _arguments(**{_field: _value}),
               r"expected one of \(", re.escape(f"{_field}={_value!r}"), r"expected one of \('")

error_case("all loss weights 0", "ce_weight=0, logit_loss_weight=0, feature_loss_weight=0",
           _arguments(ce_weight=0, logit_loss_weight=0, feature_loss_weight=0),
           r"at least one weight > 0", r"All loss weights are 0", r"Set at least one weight")
error_case("ce_weight 0 without a teacher term", "for_method('ce', ce_weight=0)",
           lambda tmp: DistillationArguments.for_method("ce", output_dir=str(tmp), ce_weight=0.0),
           r"Set ce_weight > 0", r"ce_weight=0 with no teacher term", r"turn a distillation term on")
error_case("unknown method preset", "DistillationArguments.for_method('fitnet')",
           lambda tmp: DistillationArguments.for_method("fitnet", output_dir=str(tmp)),
           r"expected one of \('ce'", r"Unknown method 'fitnet'", r"expected one of \('ce'")
error_case("lr_decay_at in epochs", "lr_decay_at='150,180'", _arguments(lr_decay_at="150,180"),
           r"increasing fractions of the run in \(0, 1\)", r"got '150,180'", r"are 0\.625,0\.75,0\.875")
error_case("lr_decay_at decreasing", "lr_decay_at='0.75,0.5'", _arguments(lr_decay_at="0.75,0.5"),
           r"increasing fractions", r"got '0\.75,0\.5'", r"are 0\.625,0\.75,0\.875")
error_case("lr_decay_at not numbers", "lr_decay_at='late'", _arguments(lr_decay_at="late"),
           r"comma-separated fractions", r"got 'late'", r"e\.g\. 0\.5,0\.75")
error_case("mixup_prob 1.5", "mixup_prob=1.5", _arguments(mixup_prob=1.5),
           r"in \[0, 1\]", r"got 1\.5", r"Set a probability")
error_case("label_smoothing_factor 1.0", "label_smoothing_factor=1.0", _arguments(label_smoothing_factor=1.0),
           r"in \[0, 1\)", r"got 1\.0", r"0\.1 is usual")
error_case("repeated_augmentation 0", "repeated_augmentation=0", _arguments(repeated_augmentation=0),
           r">= 1", r"got 0", r"1 turns it off")
error_case("teacher_check_samples 0", "teacher_check_samples=0", _arguments(teacher_check_samples=0),
           r">= 1", r"got 0", r"teacher_check='off'")
error_case("student_feature_dim 0", "student_feature_dim=0", _arguments(student_feature_dim=0),
           r"positive int", r"got 0", r"leave it unset")


# ======================================================================================================================
# 2. models and the trainer's setup
# ======================================================================================================================
group("setup")


def _same_module(tmp: Path) -> None:
    model = tiny_vit()
    DistillationTrainer(model, model, args(tmp))


error_case("same module as student and teacher (12.3)", "DistillationTrainer(m, m, args)", _same_module,
           r"Pass a separate teacher", r"same module was passed as student and teacher", r"copy\.deepcopy")
error_case("TrainingArguments instead of DistillationArguments", "DistillationTrainer(s, t, TrainingArguments(...))",
           lambda tmp: DistillationTrainer(tiny_vit(), tiny_timm_vit(), TrainingArguments(output_dir=str(tmp))),
           r"needs DistillationArguments", r"got TrainingArguments", r"Build them with DistillationArguments")
error_case("teacher with other class count", "student 5 classes, teacher 7",
           lambda tmp: trainer(tmp, teacher=tiny_timm_vit(num_classes=7)),
           r"compares them class by class", r"student predicts 5 classes but the teacher 7",
           r"num_labels=7|logit_loss='none'")
error_case("class names differ", "student id2label != teacher id2label (last name)",
           lambda tmp: trainer(tmp, student=named(tiny_vit(), CLASSES), teacher=named(tiny_vit(seed=3),
                                                                                        CLASSES[:4] + ["fox"])),
           r"compares logits index by index", r"\(4, 'eel', 'fox'\)", r"Give the student the teacher's id2label")
error_case("class names in another order", "teacher id2label reversed",
           lambda tmp: trainer(tmp, student=named(tiny_vit(), CLASSES), teacher=named(tiny_vit(seed=3),
                                                                                        CLASSES[::-1])),
           r"compares logits index by index", r"the same classes in another order",
           r"Give the student the teacher's id2label")


@case("class names differing only in case (12.9)", "'Ant' vs 'ant', 'golden_retriever' vs 'Golden Retriever'",
      "correct", verify=lambda run, tmp: None if isinstance(run, DistillationTrainer) else "no trainer")
def _case_names(tmp: Path) -> DistillationTrainer:
    names = ["Ant", "bee", "Cat", "DOG", "golden_retriever"]
    other = ["ant", "Bee", "cat", "dog", "Golden Retriever"]
    return trainer(tmp, student=named(tiny_vit(), names), teacher=named(tiny_vit(seed=3), other))


error_case("student_feature_dim mismatch", "student_feature_dim=99 (features are 32-d)",
           lambda tmp: trainer(tmp, student_feature_dim=99),
           r"features have dim 32", r"student_feature_dim=99 was given", r"Remove student_feature_dim")
error_case("teacher_feature_dim mismatch", "teacher_feature_dim=32 (features are 48-d)",
           lambda tmp: trainer(tmp, teacher_feature_dim=32),
           r"features have dim 48", r"teacher_feature_dim=32 was given", r"Remove teacher_feature_dim")
error_case("no teacher, feature term on", "DistillationTrainer(s, None, srd+kd args)",
           lambda tmp: DistillationTrainer(tiny_vit(), None, args(tmp)),
           r"every batch must carry 'teacher_features'", r"No teacher model", r"Pass teacher_model=")
error_case("model with no known head", "nn.Sequential(Flatten, Linear) as student",
           lambda tmp: DistillationTrainer(nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, C)),
                                           tiny_timm_vit(), args(tmp)),
           r"not a timm model, has no `classifier` head", r"Cannot tell where the pre-logit features of Sequential",
           r"Pass student_feature_module")
error_case("feature module that does not exist", "student_feature_module='vit.encoder.nope'",
           lambda tmp: trainer(tmp, student_feature_module="vit.encoder.nope"),
           r"is not a submodule of ViTForImageClassification", r"feature_module='vit\.encoder\.nope'",
           r"list them all with model\.named_modules\(\)")
error_case("feature module on a timm model", "teacher_feature_module='head' with a timm teacher",
           lambda tmp: trainer(tmp, teacher_feature_module="head"),
           r"read by its own forward_head\(pre_logits=True\)", r"feature_module is for models of no known family",
           r"Remove student_feature_module / teacher_feature_module")
error_case("renormalisation turned off, statistics differ", "renormalize_teacher_inputs=False, ImageNet vs 0.5",
           lambda tmp: DistillationTrainer(tiny_timm_resnet(), tiny_timm_vit(), args(
               tmp, renormalize_teacher_inputs=False), input_size=(3, SIZE, SIZE)),
           r"but the teacher expects \(\(0\.5", r"normalised with mean/std \(\(0\.485",
           r"Set renormalize_teacher_inputs=True")
CASES.append(Case(
    "student declares no mean/std (12.8)", "transformers ViT student without image_mean, timm teacher with 0.5",
    lambda tmp: trainer(tmp), "warning",
    (r"the teacher, which expects mean/std \(\(0\.5", r"input normalisation is unknown", r"Pass processing_class="),
    group="setup"))
error_case("fp16 on a CPU (12.12)", "fp16=True, use_cpu=True", lambda tmp: trainer(tmp, fp16=True),
           r"needs a GPU", r"fp16=True", r"Use bf16=True on the CPU")


def _half_teacher(dtype: torch.dtype) -> Callable[[Path], Any]:
    def run(tmp: Path) -> torch.Tensor:
        t = trainer(tmp, teacher=tiny_timm_vit().to(dtype))
        batch = {"pixel_values": torch.randn(4, 3, SIZE, SIZE), "labels": torch.tensor([0, 1, 2, 3])}
        return t.compute_loss(t.model.train(), batch)
    return run


def _finite_fp32_loss(loss: torch.Tensor, tmp: Path) -> str | None:
    return None if loss.dtype == torch.float32 and torch.isfinite(loss) else f"loss {loss} ({loss.dtype})"


CASES.append(Case("bf16 teacher beside an fp32 student (12.12)", "teacher.to(torch.bfloat16)",
                  _half_teacher(torch.bfloat16), "correct", verify=_finite_fp32_loss, group="setup"))
CASES.append(Case("fp16 teacher beside an fp32 student (12.12)", "teacher.to(torch.float16)",
                  _half_teacher(torch.float16), "correct", verify=_finite_fp32_loss, group="setup"))


def _small_inputs(tmp: Path) -> None:
    t = DistillationTrainer(tiny_timm_resnet(), tiny_timm_vit(), args(tmp, logit_loss="none"), input_size=(3, 16, 16))
    t.compute_loss(t.model.train(), {"pixel_values": torch.randn(4, 3, 16, 16), "labels": torch.zeros(4).long()})


error_case("teacher needs another input size", "32 px ViT teacher fed 16 px student batches", _small_inputs,
           r"declares inputs of \(3, 32, 32\)", r"failed on inputs of shape \(4, 3, 16, 16\)",
           r"give each batch 'teacher_pixel_values'")
error_case("student path that does not exist", "DistillationTrainer('./no/such/folder', ...)",
           lambda tmp: DistillationTrainer("./no/such/folder", tiny_timm_vit(), args(tmp)),
           r"Expected a local folder with config\.json", r"there is no such file or folder", r"check the path")
error_case("teacher Hub id, offline", "teacher_model_name_or_path='timm/resnet34.tv_in1k', HF_HUB_OFFLINE=1",
           lambda tmp: DistillationTrainer(tiny_vit(), "timm/resnet34.tv_in1k", args(tmp)),
           r"Hub ids only load from the local cache", r"Could not load the model 'timm/resnet34\.tv_in1k'",
           r"download the model once with network access, or pass a local path")
error_case("missing local teacher folder (12.12)", "teacher 'teachers/resnet32x4' (no such folder)",
           lambda tmp: DistillationTrainer(tiny_vit(), "teachers/resnet32x4", args(tmp)),
           r"tried as a Hub id", r"There is no local folder 'teachers/resnet32x4'", r"pass a local path")


def _folder_without_config(tmp: Path) -> None:
    folder = tmp / "teacher"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"")
    DistillationTrainer(tiny_vit(), str(folder), args(tmp))


error_case("teacher folder without config.json", "a folder holding only weights.safetensors",
           _folder_without_config, r"expected a folder written by save_pretrained", r"has no config\.json",
           r"re-save or re-download")


@case("ce baseline with an unreachable teacher path", "method ce, teacher_model_name_or_path='nowhere/x', "
      "eval_teacher_metrics=False", "correct", verify=lambda run, tmp: None if run.teacher is None else "loaded")
def _ce_no_teacher(tmp: Path) -> DistillationTrainer:
    values = dict(ce_weight=1.0, logit_loss="none", feature_loss_weight=0.0, eval_teacher_metrics=False,
                  teacher_model_name_or_path="nowhere/x")
    return DistillationTrainer(tiny_vit(), None, args(tmp, **values), train_dataset=images())


# ======================================================================================================================
# 3. data and batches
# ======================================================================================================================
group("data")
error_case("empty train dataset", "train_dataset=dataset.select([])",
           lambda tmp: trainer(tmp, data=images().select([])),
           r"is empty", r"train dataset is empty \(0 examples\)", r"Check the split name, the data path")
error_case("empty eval split", "eval_dataset={'validation': empty}",
           lambda tmp: DistillationTrainer(tiny_vit(), tiny_timm_vit(), args(tmp), train_dataset=images(),
                                           eval_dataset={"validation": images().select([])}),
           r"is empty", r"validation dataset is empty \(0 examples\)", r"Check the split name")
error_case("label 7 for 5 classes", "labels[3] = 7",
           lambda tmp: trainer(tmp, data=images(labels=[0, 1, 2, 7] + [0] * 12)),
           r"valid labels 0\.\.4", r"labels in \[0, 7\]", r"num_labels=8")
error_case("label -1 (unlabelled split)", "labels[0] = -1",
           lambda tmp: trainer(tmp, data=images(labels=[-1] + [0] * 15)),
           r"valid labels 0\.\.4", r"labels in \[-1, 0\]", r"train and evaluate on labelled splits")
error_case("string labels (12.12)", "'label' column of strings",
           lambda tmp: trainer(tmp, data=images(labels=None).remove_columns("labels").add_column(
               "label", ["cat", "dog"] * 8)),
           r"the losses need class indices", r"holds strings \('cat'", r"class_encode_column\('label'\)")


def _pixels(convert: Callable[[torch.Tensor], torch.Tensor], check: str = "off") -> Callable[[Path], Any]:
    def run(tmp: Path) -> None:
        pixels = convert(torch.randn(16, 3, SIZE, SIZE))
        train(tmp, data=images(16, pixels, [0, 1] * 8), teacher_check=check)
    return run


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 40 + 128).clamp(0, 255).to(torch.uint8)


error_case("uint8 pixels (12.12)", "pixel_values as uint8 0..255", _pixels(_uint8),
           r"expected normalised floats", r"'pixel_values' are torch\.u?int", r"ToTensor \+ Normalize")
error_case("uint8 pixels, teacher check on", "pixel_values uint8, teacher_check='warn'", _pixels(_uint8, "warn"),
           r"expected normalised floats", r"'pixel_values' are torch\.u?int", r"ToTensor \+ Normalize")
error_case("1-channel images (12.12)", "pixel_values (B, 1, H, W) to RGB models", _pixels(lambda x: x[:, :1]),
           r"the model expects 3", r"have 1 channels", r"convert them to RGB")
error_case("1-channel images, teacher check on", "(B, 1, H, W), teacher_check='warn'",
           _pixels(lambda x: x[:, :1], "warn"), r"the model expects 3", r"have 1 channels", r"convert them to RGB")
error_case("HWC layout (12.12)", "pixel_values (B, H, W, C)", _pixels(lambda x: x.permute(0, 2, 3, 1)),
           r"the model expects 3", r"have 32 channels \(shape \(8, 32, 32, 3\)\)",
           r"pixel_values\.permute\(0, 3, 1, 2\)")
error_case("HWC layout, teacher check on", "(B, H, W, C), teacher_check='warn'",
           _pixels(lambda x: x.permute(0, 2, 3, 1), "warn"), r"the model expects 3", r"have 32 channels",
           r"pixel_values\.permute\(0, 3, 1, 2\)")


def _mixed_sizes(tmp: Path) -> None:
    pixels = [torch.randn(3, SIZE, SIZE).numpy()] * 12 + [torch.randn(3, 28, 28).numpy()] * 4
    train(tmp, data=images(16, pixels, [0] * 16), train_sampling_strategy="sequential")


error_case("images of different sizes in a batch (12.12)", "12 images 32x32 then 4 images 28x28",
           _mixed_sizes, r"expected one \(channels, height, width\) for every", r"different shapes \[\(3, 28, 28\)",
           r"Resize or crop them to one size")


def _with_collator(collate: Callable[[list[dict]], dict], **overrides: Any) -> Callable[[Path], Any]:
    def run(tmp: Path) -> None:
        t = DistillationTrainer(tiny_vit(), tiny_timm_vit(), args(tmp, **overrides), train_dataset=images(),
                                data_collator=collate)
        t.train()
    return run


def _stack(features: list[dict], key: str) -> torch.Tensor:
    return torch.stack([torch.as_tensor(f[key]) for f in features])


error_case("image column not called pixel_values", "batches with 'image' instead of 'pixel_values'",
           _with_collator(lambda f: {"image": _stack(f, "pixel_values"), "labels": _stack(f, "labels")}),
           r"Return 'pixel_values'", r"no 'pixel_values' \(its keys: \['image', 'labels'\]\)", r"--image_column")
error_case("no labels with the cross-entropy on", "batches without 'labels'",
           _with_collator(lambda f: {"pixel_values": _stack(f, "pixel_values")}),
           r"which the cross-entropy \(and DKD\) need", r"no 'labels' \(its keys: \['pixel_values'\]\)",
           r"Return class indices under 'labels'")
error_case("float class labels", "labels as float32 (B,)",
           _with_collator(lambda f: {"pixel_values": _stack(f, "pixel_values"), "labels": _stack(f, "labels").float()}),
           r"expected integer class indices", r"are torch\.float32", r"\.long\(\)")
error_case("fewer labels than images", "collator drops the last label",
           _with_collator(lambda f: {"pixel_values": _stack(f, "pixel_values"), "labels": _stack(f, "labels")[:-1]}),
           r"one label per image", r"7 labels for 8 images", r"collator")
error_case("pixel_values as a list", "collator returns a list of tensors",
           _with_collator(lambda f: {"pixel_values": [x["pixel_values"] for x in f], "labels": _stack(f, "labels")}),
           r"must be a tensor", r"got list", r"stack them in your collator")
error_case("3-d pixel_values", "collator concatenates instead of stacking",
           _with_collator(lambda f: {"pixel_values": torch.cat([x["pixel_values"] for x in f]),
                                     "labels": _stack(f, "labels")}),
           r"must be \(batch, channels, height, width\)", r"got shape \(24, 32, 32\)", r"torch\.stack")
error_case("labels as a Python list", "collator returns labels as a list",
           _with_collator(lambda f: {"pixel_values": _stack(f, "pixel_values"),
                                     "labels": [int(x["labels"]) for x in f]}),
           r"must be a tensor of class indices", r"got list", r"torch\.tensor\(labels\)")
error_case("batch of 1 under batch norm", "per_device_train_batch_size=1, feature_norm='batchnorm'",
           lambda tmp: trainer(tmp, per_device_train_batch_size=1),
           r"needs at least 2 samples per device", r"per_device_train_batch_size=1",
           r"Raise per_device_train_batch_size or use feature_norm='layernorm'")
error_case("last batch of 1 under batch norm", "17 examples in batches of 8",
           lambda tmp: trainer(tmp, data=images(17)),
           r"on which feature_norm='batchnorm' is undefined", r"17 training examples in batches of 8 leave a last",
           r"dataloader_drop_last=True")
error_case("odd batch with mixup", "mixup_alpha=0.8, batches of 7",
           lambda tmp: train(tmp, data=images(14), per_device_train_batch_size=7, mixup_alpha=0.8,
                             feature_norm="layernorm"),
           r"needs an even batch", r"got 7", r"use an even per_device_train_batch_size")


def _nan_eval(tmp: Path) -> dict:
    pixels = torch.randn(16, 3, SIZE, SIZE)
    pixels[5] = float("nan")
    t = DistillationTrainer(tiny_vit(), tiny_timm_vit(), args(tmp, eval_teacher_metrics=False,
                                                              per_device_eval_batch_size=8),
                            eval_dataset=images(16, pixels))
    return t.evaluate()


CASES.append(Case(
    "one NaN image in the eval set (12.12)", "pixel_values[5] = NaN in eval_dataset, eval batches of 8", _nan_eval,
    "warning",
    (r"student logits", r"1 of 16 evaluation samples have NaN/inf", r"torch\.isfinite\(batch\['pixel_values'\]\)"),
    verify=lambda m, tmp: None if np.isnan(m["eval_loss"]) and m.get("eval_nonfinite_logits") == 1 else
    f"eval_loss {m['eval_loss']} (the NaN sample's batch was left out)", group="data"))


def _nan_training_image(tmp: Path) -> None:
    pixels = torch.randn(16, 3, SIZE, SIZE)
    pixels[2] = float("nan")
    train(tmp, data=images(16, pixels), train_sampling_strategy="sequential", max_steps=2)


error_case("NaN image in training", "pixel_values[2] = NaN in train_dataset", _nan_training_image,
           r"must stay finite", r"became NaN/inf between steps 0 and 1", r"NaN/inf in the inputs")


def _teacher_features_turn(tmp: Path, value: float, **overrides: Any) -> DistillationTrainer:
    """A 4-step trainer saving every step whose teacher features become ``value`` (inf / NaN) from step 3 on."""
    t = trainer(tmp, max_steps=4, save_strategy="steps", save_steps=1, **overrides)
    real = t.teacher_forward

    def forward(pixels: torch.Tensor) -> ModelFeatures:
        out = real(pixels)
        if t.state.global_step >= 2:
            out.features = torch.full_like(out.features, value)
        return out

    t.teacher_forward = forward
    return t


def _inf_teacher_features(tmp: Path) -> None:
    _teacher_features_turn(tmp, float("inf")).train()


error_case("teacher features turn inf at step 3", "teacher_forward returns inf features from step 3",
           _inf_teacher_features, r"must stay finite", r"between steps 2 and 3, in loss_feature",
           r"The last good checkpoint is .*checkpoint-2: resume from it",
           intact=checkpoints_intact("checkpoint-1", "checkpoint-2"))


@case("int32 class labels", "labels column of dtype int32", "correct",
      verify=lambda run, tmp: None if run.state.global_step == 2 else "did not train")
def _int32_labels(tmp: Path) -> DistillationTrainer:
    return train(tmp, data=images(16, labels=torch.randint(0, C, (16,), dtype=torch.int32)))


error_case("evaluate() without evaluation data", "trainer.evaluate() with no eval_dataset anywhere",
           lambda tmp: trainer(tmp).evaluate(), r"needs evaluation data", r"none was given",
           r"pass eval_dataset=\.\.\. to DistillationTrainer or to evaluate\(\)")


@case("soft (2-d) labels", "labels as (B, 5) probabilities", "correct",
      verify=lambda run, tmp: None if run.state.global_step == 2 else "did not train")
def _soft_labels(tmp: Path) -> DistillationTrainer:
    soft = torch.softmax(torch.randn(16, C), -1)
    return train(tmp, data=images(16, labels=soft))


@case("label-free distillation (KL only, no labels)", "ce_weight=0, logit_loss='kl', no 'labels' column, teacher "
      "check on", "correct", verify=lambda run, tmp: None if run.state.global_step == 2 else "did not train")
def _no_labels(tmp: Path) -> DistillationTrainer:
    data = images().remove_columns("labels")
    return train(tmp, data=data, ce_weight=0.0, teacher_check="warn")


error_case("cached teacher outputs missing a key", "no teacher model; batches carry teacher_logits only",
           lambda tmp: DistillationTrainer(tiny_vit(), None, args(tmp, teacher_feature_dim=48),
                                           train_dataset=images(teacher_logits=torch.randn(16, C).numpy())).train(),
           r"which this method needs", r"not \['teacher_features'\]", r"add 'teacher_features' to each batch")
error_case("no teacher and no cached outputs", "teacher_feature_dim=48, no teacher, plain batches",
           lambda tmp: DistillationTrainer(tiny_vit(), None, args(tmp, teacher_feature_dim=48),
                                           train_dataset=images()).train(),
           r"no cached teacher outputs \(\('teacher_logits', 'teacher_features'\)\)",
           r"its keys are \['labels', 'pixel_values'\]", r"Pass teacher_model=")
error_case("cached teacher features of the wrong dim", "teacher_features (B, 7), teacher_feature_dim=48",
           lambda tmp: DistillationTrainer(tiny_vit(), None, args(tmp, teacher_feature_dim=48), train_dataset=images(
               teacher_logits=torch.randn(16, C).numpy(), teacher_features=torch.randn(16, 7).numpy())).train(),
           r"the projector was built for \(batch, 48\)", r"teacher's features have shape \(8, 7\)",
           r"store 'teacher_features' of the teacher's pooled pre-logit dim")


# -- the teacher check ---------------------------------------------------------------------------------------------
def _check_warning(name: str, how: str, run: Callable[[Path], Any], rule: tuple[str, str, str]) -> None:
    CASES.append(Case(name, how, run, "warning", rule, group="data"))


_check_warning("labels permuted, LABEL_i names (12.9)", "dataset labels = roll(classes, 1); no class names",
               lambda tmp: teacher_check_run(tmp, declaring(tiny_vit()),
                                             brightness_images(permutation=[1, 2, 3, 4, 0])),
               (r"the teacher's classes", r"match the labels 100\.0% of the time once its classes are renamed",
                r"Map the labels to the teacher's class order"))
_check_warning("labels permuted, names copied from the teacher (12.9)",
               "student id2label = teacher's names; labels = roll(classes, 1)",
               lambda tmp: teacher_check_run(tmp, named(declaring(tiny_vit()), CLASSES),
                                             brightness_images(permutation=[1, 2, 3, 4, 0]),
                                             BrightnessTeacher(names=CLASSES)),
               (r"the teacher's classes", r"once its classes are renamed", r"Map the labels to the teacher's class"))
_check_warning("random-init timm student's assumed mean/std (12.8)",
               "timm resnet10t student (ImageNet stats assumed), data normalised with 0.5",
               lambda tmp: teacher_check_run(tmp, tiny_timm_resnet(), brightness_images()),
               (r"not as the student declares", r"100\.0% if the inputs were converted from mean/std 0\.5",
                r"Pass the image processor \(processing_class=\.\.\.\)"))
_check_warning("wrong teacher (random weights)", "a random-init teacher with the student's classes",
               lambda tmp: teacher_check_run(tmp, declaring(tiny_vit()), brightness_images(80),
                                             declaring(tiny_vit(seed=7), BrightnessTeacher.stats)),
               (r"near chance \(20\.0%\)", r"scores [\d.]+% top-1 on the first 80 examples as fed",
                r"check that it is the right teacher for this dataset"))
error_case("teacher_check='error' with misnormalised data", "as the assumed-mean/std case, teacher_check='error'",
           lambda tmp: teacher_check_run(tmp, tiny_timm_resnet(), brightness_images(), mode="error"),
           r"not as the student declares", r"converted from mean/std 0\.5", r"processing_class=",
           intact=nothing_saved)


# ======================================================================================================================
# 4. data loading
# ======================================================================================================================
group("data loading")
error_case("dataset Hub id, offline", "load_image_dataset('nobody/no-such-dataset')",
           lambda tmp: load_image_dataset("nobody/no-such-dataset"),
           r"Expected a Hub id such as 'uoft-cs/cifar100'", r"Could not load the dataset 'nobody/no-such-dataset'",
           r"a folder of '<split>-\*\.parquet' files")


def _csv_file(tmp: Path) -> None:
    (tmp / "data.csv").write_text("image,label\n")
    load_image_dataset(str(tmp / "data.csv"))


error_case("a .csv file as dataset", "load_image_dataset('data.csv')", _csv_file,
           r"pass a parquet file, a folder or a Hub id", r"is a file but not \.parquet", r"pass a parquet file")


def _empty_split(tmp: Path) -> None:
    Dataset.from_dict({"image": ["a", "b"], "label": [0, 1]}).to_parquet(tmp / "train-00000.parquet")
    Dataset.from_dict({"image": ["a"], "label": [0]}).select([]).to_parquet(tmp / "test-00000.parquet")
    load_image_dataset(str(tmp))


error_case("empty test split", "test-00000.parquet with 0 rows", _empty_split,
           r"are empty", r"split\(s\) \['test'\]", r"Check the files/folders of that split, or remove them")
def _split_class_orders(tmp: Path) -> Path:
    for split, names in (("train", ["cat", "dog", "eel"]), ("test", ["dog", "cat", "eel"])):
        Dataset.from_dict({"image": [_png((32, 32))] * 3, "label": [0, 1, 2]}, features=Features(
            {"image": ImageFeature(), "label": ClassLabel(names=names)})).to_parquet(str(tmp / f"{split}-0.parquet"))
    return tmp


error_case("splits with the classes in another order", "test-0.parquet's ClassLabel names: dog, cat, eel "
           "(train: cat, dog, eel)", lambda tmp: load_image_dataset(str(_split_class_orders(tmp))),
           r"Expected the same ClassLabel names in every file", r"\(0, 'cat', 'dog'\), \(1, 'dog', 'cat'\)",
           r"Re-export the splits with one ClassLabel")
error_case("no image column", "columns 'picture', 'target'",
           lambda tmp: resolve_columns(Dataset.from_dict({"picture": [1], "target": [0]})),
           r"looked for \['image'", r"the dataset has \['picture', 'target'\]", r"--image_column=<column>")
error_case("wrong --label_column", "label_column='y'",
           lambda tmp: resolve_columns(Dataset.from_dict({"image": [1], "target": [0]}), label_column="y"),
           r"its columns are \['image', 'target'\]", r"--label_column='y' is not a column",
           r"Pass one of them with --label_column=<column>")


def _png(size: tuple[int, int]) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((*size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _decode(items: list[dict], image_size: int | None = None) -> Any:
    data = Dataset.from_dict({"image": items, "label": [0] * len(items)},
                             features=Features({"image": ImageFeature(), "label": ClassLabel(names=["a"])}))
    return decode_image_dataset(data, "image", "label", image_size)


error_case("mixed image sizes at decode (12.12)", "decode_image_dataset of 32x32 and 28x28 images",
           lambda tmp: _decode([_png((32, 32)), _png((28, 28))]),
           r"The images have different sizes", r"\[\(28, 28, 3\), \(32, 32, 3\)\]", r"pass image_size=<side>")
error_case("undecodable image bytes", "decode_image_dataset with a truncated PNG at row 1",
           lambda tmp: _decode([_png((32, 32)), {"bytes": _png((32, 32))["bytes"][:40], "path": None}]),
           r"expected an image PIL can read", r"row 1", r"Remove or re-encode it")
error_case("decode with missing columns", "decode_image_dataset(data, 'img', 'label')",
           lambda tmp: decode_image_dataset(Dataset.from_dict({"image": [1], "label": [0]}), "img", "label"),
           r"Columns 'img' and 'label' are needed", r"the dataset has \['image', 'label'\]", r"Pass the right names")


def _int_labels_parquet(tmp: Path) -> Path:
    for split in ("train", "test", "validation"):
        Dataset.from_dict({"image": [_png((32, 32))] * 4, "label": [0, 1, 0, 1]},
                          features=Features({"image": ImageFeature(), "label": Dataset.from_dict(
                              {"x": [0]}).features["x"]})).to_parquet(str(tmp / f"{split}-00000.parquet"))
    return tmp


error_case("CIFAR labels not a ClassLabel", "load_decoded_splits of a parquet with int64 labels",
           lambda tmp: load_decoded_splits(str(_int_labels_parquet(tmp))),
           r"not a ClassLabel: the class names and their order are unknown", r"is Value",
           r"Cast it \(dataset\.class_encode_column")
error_case("ImageNet labels not a ClassLabel", "load_imagenet of a parquet with int64 labels",
           lambda tmp: load_imagenet(ImageNetDataArguments(dataset_name=str(_int_labels_parquet(tmp)), input_size=32)),
           r"not a ClassLabel, so the number of classes", r"is Value", r"Cast it first")
error_case("CIFAR split that does not exist", "load_decoded_splits(eval_split='valid')",
           lambda tmp: load_decoded_splits(str(FIX.cifar_subset()), eval_split="valid"),
           r"it has \['train', 'test'\]", r"has no split 'valid'", r"pass --train_split / --eval_split")
error_case("ImageNet split that does not exist", "load_imagenet(eval_split='val')",
           lambda tmp: load_imagenet(ImageNetDataArguments(dataset_name=str(FIX.image_parquet()), eval_split="val")),
           r"which has \['train', 'validation', 'test'\]", r"Split 'val' is not in",
           r"Set --train_split / --eval_split")


def _corrupt_image_in_folder(tmp: Path) -> None:
    for split in ("train", "validation"):
        for name in CLASSES[:2]:
            (tmp / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((36, 36, 3), dtype=np.uint8)).save(tmp / split / name / "0.png")
    (tmp / "train" / "ant" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    data = load_imagenet(ImageNetDataArguments(dataset_name=str(tmp), input_size=32))
    for i in range(len(data.train)):
        data.train[i]


error_case("undecodable image in an image folder", "train/ant/1.png holds 16 broken bytes", _corrupt_image_in_folder,
           r"expected an image PIL can read", r"1\.png", r"Remove or re-encode it")
error_case("collator with teacher_mean but no teacher_std", "CifarCollator(mean, std, teacher_mean=...)",
           lambda tmp: CifarCollator((0.5,) * 3, (0.5,) * 3, teacher_mean=(0.4,) * 3),
           r"Pass both teacher_mean and teacher_std", r"teacher_mean without teacher_std", r"or neither")
error_case("repeated augmentation on too few images", "RepeatedAugmentationSampler(3 images, batch 4)",
           lambda tmp: RepeatedAugmentationSampler(3, 4),
           r"needs at least one full batch per process", r"3 samples, 1 processes, batch 4",
           r"Use a smaller batch or repeated_augmentation=1")
error_case("random crop of a 3-d tensor", "random_crop_flip(torch.zeros(3, 32, 32))",
           lambda tmp: random_crop_flip(torch.zeros(3, 32, 32)),
           r"expects a \(B, C, H, W\) batch", r"got shape \(3, 32, 32\)", r"unsqueeze\(0\)")
error_case("crop_pct 1.5", "ImageNetDataArguments(crop_pct=1.5)",
           lambda tmp: ImageNetDataArguments(crop_pct=1.5),
           r"--crop_pct in \(0, 1\]", r"got 224 and 1\.5", r"0\.875")


# ======================================================================================================================
# 5. checkpoints and resume
# ======================================================================================================================
group("checkpoints")


def _resume_damaged(name: str, how: str, accept: bool = False, checkpoint: str = "checkpoint-2"):
    def run(tmp: Path) -> None:
        FIX.copy_of_run(tmp)
        folder = tmp / checkpoint
        damage(folder / name, how)
        if accept:
            mark_checkpoint_complete(folder)
        resume(tmp, str(folder))
    return run


_GOOD = checkpoints_intact("checkpoint-1")
for _name, _how in [("model.safetensors", "truncate"), ("model.safetensors", "zeros"),
                    ("model.safetensors", "random"), ("optimizer.pt", "random")]:
    _found = r"does not match the checksum" if _how != "truncate" else r"has \d+ bytes, the manifest recorded"
    error_case(f"{_name} {_how} (12.5)", f"checkpoint-2/{_name}: {_how}, then resume from it",
               _resume_damaged(_name, _how), r"Cannot resume from", rf"{re.escape(_name)} {_found}",
               r"Resume from .*checkpoint-1 \(the newest intact checkpoint\)", intact=_GOOD)
for _name in ("trainer_state.json", "rng_state.pth", "scheduler.pt", "training_args.bin"):
    error_case(f"broken {_name}, accepted by hand (12.12)",
               f"checkpoint-2/{_name} damaged, then mark_checkpoint_complete(checkpoint-2), resume",
               _resume_damaged(_name, "{broken" if _name.endswith(".json") else "truncate", accept=True),
               r"Cannot resume from", rf"{re.escape(_name)} is truncated or corrupt", r"Resume from .*checkpoint-1",
               intact=_GOOD)


def _missing_listed_file(tmp: Path) -> None:
    FIX.copy_of_run(tmp)
    (tmp / "checkpoint-2" / "rng_state.pth").unlink()
    resume(tmp, str(tmp / "checkpoint-2"))


error_case("file listed in the manifest missing", "delete checkpoint-2/rng_state.pth, resume from it",
           _missing_listed_file, r"the manifest lists it", r"rng_state\.pth is missing", r"Resume from .*checkpoint-1",
           intact=_GOOD)


def _no_manifest(tmp: Path) -> None:
    FIX.copy_of_run(tmp)
    (tmp / "checkpoint-2" / "checkpoint_complete.json").unlink()
    resume(tmp, str(tmp / "checkpoint-2"))


error_case("checkpoint killed mid-save", "checkpoint-2 without its manifest, resume from it", _no_manifest,
           r"Cannot resume from", r"has no checkpoint_complete\.json: it was being written when the run stopped",
           r"Resume from .*checkpoint-1", intact=_GOOD)


def _broken_manifest(tmp: Path) -> None:
    FIX.copy_of_run(tmp)
    (tmp / "checkpoint-2" / "checkpoint_complete.json").write_text("{")
    resume(tmp, str(tmp / "checkpoint-2"))


error_case("unreadable manifest", "checkpoint-2/checkpoint_complete.json = '{'", _broken_manifest,
           r"Cannot resume from", r"checkpoint_complete\.json is unreadable", r"Resume from .*checkpoint-1",
           intact=_GOOD)


@case("resume=True skips a half-written newest checkpoint", "checkpoint-2 without its manifest, "
      "resume_from_checkpoint=True", "correct", intact=_GOOD,
      verify=lambda run, tmp: None if logged_steps(run) == [1, 2, 3] else f"steps {logged_steps(run)}")
def _resume_true_skips(tmp: Path) -> DistillationTrainer:
    FIX.copy_of_run(tmp)
    (tmp / "checkpoint-2" / "checkpoint_complete.json").unlink()
    return resume(tmp, True)


@case("crash between a checkpoint's files and its manifest", "KeyboardInterrupt before checkpoint-4's manifest, "
      "save_total_limit=1, then resume_from_checkpoint=True", "correct",
      verify=lambda run, tmp: None if logged_steps(run) == [1, 2, 3, 4] else f"steps {logged_steps(run)}")
def _crash_mid_save(tmp: Path) -> DistillationTrainer:
    real = trainer_module.mark_checkpoint_complete

    def crash(folder: Any, step: int | None = None) -> Any:
        if step == 4:
            raise KeyboardInterrupt("killed after writing checkpoint-4's files")
        return real(folder, step)

    trainer_module.mark_checkpoint_complete = crash
    try:
        train(tmp, max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1)
    except KeyboardInterrupt:
        pass
    finally:
        trainer_module.mark_checkpoint_complete = real
    if checkpoint_problem(tmp / "checkpoint-2") is not None:
        raise AssertionError("checkpoint-2 was rotated away before checkpoint-4 was complete")
    return train(tmp, max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1,
                 resume_from_checkpoint=True)


for _label, _changes, _found in [
    ("another teacher (12.4)", {"teacher": "other"}, r"teacher\.weights_sha256: '[0-9a-f]{8}"),
    ("another student architecture (12.4)", {"student": "deeper"}, r"student\.parameters\.\S+\.2\.\S+: '\(absent\)'"),
    ("another feature weight (12.4)", {"feature_loss_weight": 1.0}, r"method\.feature_loss_weight: 2\.0 vs 1\.0"),
    ("another projector", {"projector": "mlp"}, r"method\.projector: 'linear' vs 'mlp'"),
]:
    def _run(tmp: Path, changes: dict = _changes) -> None:
        FIX.copy_of_run(tmp)
        models = {"teacher": tiny_timm_vit(seed=9)} if changes.get("teacher") else {}
        models.update({"student": tiny_vit(layers=3)} if changes.get("student") else {})
        resume(tmp, str(tmp / "checkpoint-2"), **models, **{k: v for k, v in changes.items()
                                                            if k not in ("teacher", "student")})
    error_case(f"resume with {_label}", f"resume checkpoint-2 with {_changes}", _run,
               r"Resume with the same teacher, student architecture and method settings", _found,
               r"or start a new run in another output_dir", intact=checkpoints_intact("checkpoint-1", "checkpoint-2"))


def _no_fingerprint(tmp: Path) -> None:
    FIX.copy_of_run(tmp)
    (tmp / "checkpoint-2" / "run_fingerprint.json").unlink()
    mark_checkpoint_complete(tmp / "checkpoint-2")
    resume(tmp, str(tmp / "checkpoint-2"))


error_case("checkpoint without a fingerprint", "run_fingerprint.json removed, accepted by hand", _no_fingerprint,
           r"cannot be checked to come from this run", r"has no run_fingerprint\.json",
           r"Resume from a checkpoint written by this version", intact=_GOOD)
error_case("fresh start over existing checkpoints", "train() again in the same output_dir without resume",
           lambda tmp: train(FIX.copy_of_run(tmp), save_strategy="steps", save_steps=1),
           r"this run was not asked to resume", r"already holds checkpoints \(checkpoint-1, checkpoint-2\)",
           r"--resume_from_checkpoint true", intact=checkpoints_intact("checkpoint-1", "checkpoint-2"))


@case("overwrite_output_dir=True over checkpoints", "train() again with overwrite_output_dir=True", "correct",
      verify=lambda run, tmp: None if run.state.global_step == 2 and checkpoint_problem(tmp / "checkpoint-2") is None
      else "no new run")
def _overwrite(tmp: Path) -> DistillationTrainer:
    return train(FIX.copy_of_run(tmp), save_strategy="steps", save_steps=1, overwrite_output_dir=True)


def _output_dir_file(tmp: Path) -> None:
    (tmp / "run").write_text("notes")
    train(tmp / "run")


error_case("output_dir is a file", "output_dir points to an existing file", _output_dir_file,
           r"expected a folder \(or a path that does not exist yet\)", r"output_dir .*/run is a file",
           r"Pass another output_dir, or move that file away",
           intact=lambda tmp: None if (tmp / "run").read_text() == "notes" else "the file was overwritten")
error_case("resume=True with no checkpoint", "resume_from_checkpoint=True in an empty output_dir",
           lambda tmp: train(tmp, resume_from_checkpoint=True),
           r"holds no intact checkpoint", r"found none", r"Start without resume_from_checkpoint")
error_case("resume from a path that does not exist", "resume_from_checkpoint='.../checkpoint-99'",
           lambda tmp: train(tmp, resume_from_checkpoint=str(tmp / "checkpoint-99")),
           r"Cannot resume from", r"checkpoint-99 does not exist", r"There is no intact checkpoint beside it")
error_case("num_train_epochs=0 (12.12)", "num_train_epochs=0, max_steps=-1",
           lambda tmp: train(tmp, num_train_epochs=0, max_steps=-1),
           r"Set num_train_epochs > 0 or max_steps > 0", r"num_train_epochs=0 and no max_steps",
           r"Set num_train_epochs > 0", intact=nothing_saved)


def _locked(tmp: Path) -> None:
    FIX.copy_of_run(tmp)
    code = ("import importlib.util, sys, time\n"
            f"spec = importlib.util.spec_from_file_location('c', {str(ROOT / 'hf_projkd' / 'checkpointing.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "lock = m.RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(300)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp)], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        resume(tmp, True)
    finally:
        holder.kill()
        holder.wait()


error_case("second run in the same output_dir (12.7)", "another process holds the run lock; resume in it",
           _locked, r"two runs writing the same output_dir overwrite", r"is in use by another run \(pid \d+",
           r"Use another output_dir, or wait for that run to finish",
           intact=checkpoints_intact("checkpoint-1", "checkpoint-2"))


@case("lock of a crashed run (12.7)", "a process takes the lock and is SIGKILLed; then resume", "correct",
      verify=lambda run, tmp: None if logged_steps(run) == [1, 2, 3] else f"steps {logged_steps(run)}")
def _crashed_lock(tmp: Path) -> DistillationTrainer:
    FIX.copy_of_run(tmp)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               "h = open(sys.argv[1], 'a+'); fcntl.flock(h, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True); time.sleep(300)", str(tmp / ".hf_projkd.lock")],
                              stdout=subprocess.PIPE, text=True)
    holder.stdout.readline()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    return resume(tmp, True)


def _diverged(tmp: Path, **overrides: Any) -> DistillationTrainer:
    t = _teacher_features_turn(tmp, float("nan"), **overrides)
    with contextlib.suppress(FloatingPointError):
        t.train()
    return t


error_case("save_model after a NaN loss (12.6)", "NaN teacher features from step 3, then trainer.save_model()",
           lambda tmp: _diverged(tmp).save_model(str(tmp / "student")),
           r"saving it would publish a broken model", r"The student has NaN/inf weights",
           r"Resume from the last good checkpoint instead, or pass allow_non_finite=True",
           intact=lambda tmp: checkpoints_intact("checkpoint-2")(tmp) or finite_model_files(tmp))
error_case("NaN loss with save_total_limit=1", "NaN from step 3, a checkpoint every step, limit 1",
           lambda tmp: _diverged(tmp, save_total_limit=1).save_model(str(tmp / "student")),
           r"saving it would publish a broken model", r"NaN/inf weights", r"Resume from the last good checkpoint",
           intact=lambda tmp: checkpoints_intact("checkpoint-2")(tmp) or finite_model_files(tmp))


@case("save_model(allow_non_finite=True) after a NaN loss (12.6)", "the explicit opt-in", "correct",
      verify=lambda run, tmp: None if (tmp / "student" / "model.safetensors").is_file() else "nothing written")
def _opt_in(tmp: Path) -> DistillationTrainer:
    t = _diverged(tmp)
    t.save_model(str(tmp / "student"), allow_non_finite=True)
    return t


# ======================================================================================================================
# 6. loading models
# ======================================================================================================================
group("loading")


def _damaged_teacher_file(how: str) -> Callable[[Path], Any]:
    def run(tmp: Path) -> None:
        folder = tmp / "teacher"
        shutil.copytree(FIX.timm_teacher_folder(), folder)
        path = folder / "model.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\xff" * 8 + data[8:])
        DistillationTrainer(tiny_timm_resnet(), str(folder), args(tmp))
    return run


for _how in ("truncated", "corrupt header"):
    error_case(f"{_how} teacher model.safetensors (12.12)", f"teacher folder with a {_how} model.safetensors",
               _damaged_teacher_file(_how), r"Could not load the model", r"model\.safetensors is truncated or corrupt",
               r"Re-save or re-download it")


def _truncated_cifar_teacher(tmp: Path) -> None:
    path = tmp / "resnet20.safetensors"
    data = FIX.cifar_teacher().read_bytes() if FIX.cifar_teacher().is_file() else b""
    path.write_bytes(data[: len(data) // 3])
    load_image_classifier(str(path))


error_case("truncated CIFAR teacher .safetensors file (12.12)", "a third of cifar10_resnet20.safetensors",
           _truncated_cifar_teacher, r"Could not load the model", r"resnet20\.safetensors is truncated or corrupt",
           r"Re-save or re-download it")


def _timm_without_weights(tmp: Path) -> None:
    shutil.copy(FIX.timm_teacher_folder() / "config.json", tmp / "config.json")
    load_image_classifier(str(tmp))


error_case("timm folder without weights", "config.json only", _timm_without_weights,
           r"a timm folder needs config\.json and one of \('model\.safetensors', 'pytorch_model\.bin'\)",
           r"has no weights", r"one of \('model\.safetensors'")


def _broken_config(tmp: Path) -> None:
    shutil.copytree(FIX.timm_teacher_folder(), tmp / "teacher")
    (tmp / "teacher" / "config.json").write_text("{'architecture': resnet10t")
    load_image_classifier(str(tmp / "teacher"))


error_case("config.json that is not JSON", "config.json = \"{'architecture': resnet10t\"", _broken_config,
           r"expected the config\.json that save_pretrained", r"config\.json is not valid JSON \(Expecting",
           r"re-save or re-download them")


@case("timm teacher saved as pytorch_model.bin (12.14)", "save_for_hf(safe_serialization=False), then load", "correct",
      verify=lambda out, tmp: None if torch.allclose(out[0], out[1]) and out[2] == CLASSES else "other model/names")
def _bin_teacher(tmp: Path) -> tuple:
    from timm.models import save_for_hf

    model = tiny_timm_resnet().eval()
    save_for_hf(model, str(tmp), safe_serialization=False, model_config={"label_names": CLASSES})
    loaded = load_image_classifier(str(tmp)).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        return loaded(x), model(x), adapter_for(loaded).label_names()


@case("saved timm student: class names and metadata (12.14)", "create_student('timm:resnet10t', names), save, reload",
      "correct", verify=lambda out, tmp: None if out == (CLASSES, []) else f"names/metadata {out}")
def _timm_student(tmp: Path) -> tuple:
    student = create_student("timm:resnet10t", CLASSES, SIZE)
    t = DistillationTrainer(student, None, args(tmp, logit_loss="none", feature_loss_weight=0.0))
    t.save_model(str(tmp / "student"))
    saved = json.loads((tmp / "student" / "config.json").read_text())["pretrained_cfg"]
    return adapter_for(load_image_classifier(str(tmp / "student"))).label_names(), sorted(
        {"hf_hub_id", "tag", "license", "paper_ids"} & set(saved))


error_case("unknown student name", "create_student('not-a-model', ...)",
           lambda tmp: create_student("not-a-model", CLASSES, SIZE),
           r"tried as a Hub id", r"Could not load the model 'not-a-model'", r"pass a local path")
error_case("cifar: prefix on a non-CIFAR name", "create_student('cifar:vit_base', ...)",
           lambda tmp: create_student("cifar:vit_base", CLASSES, SIZE),
           r"CIFAR architectures are", r"'vit_base' is not a CIFAR architecture", r"timm:vit_base")


def _config_file(tmp: Path, **values: Any) -> str:
    path = tmp / "student.json"
    path.write_text(json.dumps(values))
    return str(path)


error_case("student config.json of another image size", "model_type deit, image_size 64, --input_size 32",
           lambda tmp: create_student(_config_file(tmp, model_type="deit", image_size=64, patch_size=16), CLASSES, 32),
           r"set them equal", r"image_size=64 but --input_size is 32", r"set them equal")
error_case("student config.json without model_type", "{'image_size': 32}",
           lambda tmp: create_student(_config_file(tmp, image_size=32), CLASSES, 32),
           r"expected a transformers config\.json", r"has no 'model_type'", r"\"model_type\": \"deit\"")


# ======================================================================================================================
# 7. the recipe command lines
# ======================================================================================================================
group("recipes")


def _cifar_argv(tmp: Path, *extra: str, method: str = "srd+kd", teacher: bool = True) -> list[str]:
    argv = ["--method", method, "--student", "resnet8", "--dataset", str(FIX.cifar_subset()),
            "--per_device_train_batch_size", "16", "--max_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true",
            "--output_dir", str(tmp / "out"), "--report_to", "none", "--teacher_check", "off"]
    return argv + (["--teacher", str(FIX.cifar_teacher())] if teacher else []) + list(extra)


def _cifar(*extra: str, **kwargs: Any) -> Callable[[Path], Any]:
    import cifar

    return lambda tmp: cifar.main(_cifar_argv(tmp, *extra, **kwargs))


def _parse_cifar(*argv: str) -> Callable[[Path], Any]:
    import cifar

    return lambda tmp: cifar.parse([*argv, "--output_dir", str(tmp)])


error_case("cifar.py --method without its value (12.2)", "recipes/cifar.py --method", _parse_cifar("--method"),
           r"expected one argument", r"argument --method", r"usage: ")
error_case("cifar.py --method fitnet", "recipes/cifar.py --method fitnet", _parse_cifar("--method", "fitnet"),
           r"choose from 'ce', 'kd'", r"invalid choice: 'fitnet'", r"choose from 'ce'")
error_case("cifar.py --config missing.yaml", "recipes/cifar.py --config missing.yaml",
           _parse_cifar("--config", "missing.yaml"), r"a YAML or JSON file of field values",
           r"--config missing\.yaml: no such file", r"Pass the path of a YAML or JSON file")


def _config(text: str, suffix: str = ".yaml") -> Callable[[Path], Any]:
    import cifar

    def run(tmp: Path) -> Any:
        path = tmp / f"run{suffix}"
        path.write_text(text)
        return cifar.parse(["--config", str(path), "--output_dir", str(tmp)])
    return run


error_case("--config that is not YAML", "recipes/cifar.py --config run.yaml (':' unbalanced)",
           _config("method: [kd\n"), r"Expected a mapping of field names to values",
           r"run\.yaml is not valid YAML: .*line 2", r"fix the line the parser names")
error_case("--config holding a list", "--config run.yaml containing '- kd'", _config("- kd\n"),
           r"must hold a mapping of field names to values", r"got list", r"field names to values")
error_case("--config with an unknown field", "--config run.yaml with 'learning_rat: 0.1'",
           _config("learning_rat: 0.1\n"), r"--help lists the fields", r"Unknown fields \['learning_rat'\]",
           r"--help lists the fields")
error_case("misspelt command-line flag", "recipes/cifar.py --lerning_rate 0.1", _parse_cifar("--lerning_rate", "0.1"),
           r"usage: ", r"unrecognized arguments: --lerning_rate 0\.1", r"did you mean --learning_rate")
error_case("--max_train_samples 0 (12.12)", "recipes/cifar.py --max_train_samples 0",
           _parse_cifar("--max_train_samples", "0"), r">= 1 \(or left unset\)", r"got 0", r"or left unset")
error_case("--image_mean with 2 values", "recipes/cifar.py --image_mean 0.5,0.5",
           _parse_cifar("--image_mean", "0.5,0.5"), r"needs 3 comma-separated values", r"got '0\.5,0\.5'",
           r"e\.g\. --image_mean 0\.50")
error_case("--teacher and --teacher_model_name_or_path differ", "--teacher a --teacher_model_name_or_path b",
           _parse_cifar("--teacher", "a", "--teacher_model_name_or_path", "b"),
           r"pass one of them", r"--teacher 'a' and --teacher_model_name_or_path 'b' differ", r"pass one of them")


@case("cifar.py --method=kd --config=x.yaml (12.2)", "the '=' forms of both flags", "correct",
      verify=lambda out, tmp: None if out[0].method == "kd" and out[1].temperature == 4.0 and out[1].dkd_beta == 3.0
      else f"method {out[0].method}, T {out[1].temperature}, dkd_beta {out[1].dkd_beta}")
def _equals_form(tmp: Path) -> Any:
    import cifar

    (tmp / "x.yaml").write_text("dkd_beta: 3.0\n")
    return cifar.parse([f"--config={tmp / 'x.yaml'}", "--method=kd", f"--output_dir={tmp}"])


error_case("cifar.py --method kd without a teacher", "recipes/cifar.py --method kd (no --teacher)",
           _cifar(method="kd", teacher=False), r"needs a teacher", r"--method kd", r"pass --teacher <folder")
error_case("cifar.py dataset Hub id offline", "recipes/cifar.py --dataset nobody/cifar",
           lambda tmp: __import__("cifar").main(["--dataset", "nobody/cifar", "--output_dir", str(tmp),
                                                 "--use_cpu", "true", "--method", "ce"]),
           r"Expected a Hub id such as", r"Could not load the dataset 'nobody/cifar'", r"\.parquet file")
error_case("cifar.py --eval_split validation", "CIFAR has no validation split", _cifar("--eval_split", "validation"),
           r"it has \['train', 'test'\]", r"has no split 'validation'", r"pass --train_split / --eval_split")
error_case("cifar.py --label_column fine_label on CIFAR-10", "--label_column fine_label",
           _cifar("--label_column", "fine_label"), r"its columns are \[",
           r"--label_column='fine_label' is not a column", r"Pass one of them with --label_column")
error_case("cifar.py on splits with the classes in another order", "--dataset <train: cat, dog, eel; test: dog, "
           "cat, eel>", lambda tmp: __import__("cifar").main(["--dataset", str(_split_class_orders(tmp)), "--method",
                                                              "ce", "--output_dir", str(tmp / "out")]),
           r"Expected the same ClassLabel names in every file", r"name the classes of 'label' differently",
           r"Re-export the splits with one ClassLabel")
error_case("cifar.py --student resnet9000", "an architecture that does not exist", _cifar("--student", "resnet9000"),
           r"tried as a Hub id", r"Could not load the model 'resnet9000'", r"pass a local path")
error_case("cifar.py --resume_from_checkpoint true, nothing to resume", "empty --output_dir",
           _cifar("--resume_from_checkpoint", "true"), r"holds no intact checkpoint", r"found none",
           r"Start without resume_from_checkpoint")


def _recipe_restart(tmp: Path) -> Any:
    import cifar

    argv = _cifar_argv(tmp, "--save_strategy", "steps", "--save_steps", "1")
    cifar.main(argv)
    return cifar.main(argv)


error_case("cifar.py run again over its checkpoints (12.1)", "the same command twice (save every step)",
           _recipe_restart, r"this run was not asked to resume", r"already holds checkpoints \(checkpoint-1\)",
           r"--resume_from_checkpoint true", intact=lambda tmp: checkpoints_intact("checkpoint-1")(tmp / "out"))
error_case("train_teacher.py --method kd", "recipes/train_teacher.py --method kd",
           lambda tmp: __import__("train_teacher").main(["--method", "kd", "--output_dir", str(tmp)]),
           r"trains with cross-entropy only", r"got method 'kd'", r"use recipes/cifar\.py to distil")


def _imagenet_parse(*argv: str) -> Callable[[Path], Any]:
    import deit_tiny
    import imagenet

    return lambda tmp: imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, ["--output_dir", str(tmp), *argv])


error_case("deit_tiny.py --learning_rate and --base_learning_rate", "both given",
           _imagenet_parse("--learning_rate", "0.01", "--base_learning_rate", "0.001"),
           r"--learning_rate \(used as given\) or --base_learning_rate \(scaled", r"not both", r"Pass either")


@case("deit_tiny.py --learning_rate 0.01 (12.11)", "explicit lr with the base-lr rule in deit.yaml", "correct",
      verify=lambda lr, tmp: None if lr == 0.01 else f"learning_rate {lr}")
def _explicit_lr(tmp: Path) -> float:
    import imagenet

    recipe, _, values = _imagenet_parse("--learning_rate", "0.01", "--use_cpu", "true")(tmp)
    imagenet.configure_schedule(values, recipe, 1000, streaming=False)
    return values.learning_rate


@case("deit_tiny.py --dataloader_num_workers 0 (12.13)", "persistent workers default on, no workers", "correct",
      verify=lambda a, tmp: None if a.dataloader_persistent_workers is False else "persistent workers kept")
def _no_workers(tmp: Path) -> Any:
    return _imagenet_parse("--dataloader_num_workers", "0")(tmp)[2]


@case("deit_tiny.py defaults on this machine (12.11)", "deit.yaml says bf16: true; 2 cores", "correct",
      verify=lambda a, tmp: None if (a.bf16 == (torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and
                                     a.dataloader_num_workers <= max(0, (os.cpu_count() or 1) - 1)) else
      f"bf16 {a.bf16}, workers {a.dataloader_num_workers}")
def _machine_defaults(tmp: Path) -> Any:
    return _imagenet_parse()(tmp)[2]


def _imagenet_run(*extra: str) -> Callable[[Path], Any]:
    import imagenet
    import imagenet_resnet18

    def run(tmp: Path) -> Any:
        argv = ["--dataset_name", str(FIX.image_parquet()), "--output_dir", str(tmp / "out"), "--input_size", "32",
                "--teacher_model_name_or_path", str(FIX.timm_teacher_folder()), "--per_device_train_batch_size", "4",
                "--max_steps", "1", "--use_cpu", "true", "--bf16", "false", "--dataloader_num_workers", "0",
                "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
                "--teacher_check", "off", *extra]
        return imagenet.run("imagenet_resnet18.yaml", imagenet_resnet18.DEFAULTS, argv)
    return run


error_case("imagenet --auto_augment bogus", "an unknown timm policy string", _imagenet_run("--auto_augment", "bogus"),
           r"expected e\.g\. 'rand-m9-mstd0\.5-inc1'", r"--auto_augment 'bogus' is not a timm augmentation policy",
           r"or 'none' to turn it off")
error_case("imagenet --interpolation cubic", "--interpolation cubic", _imagenet_parse("--interpolation", "cubic"),
           r"expected one of \('bicubic'", r"--interpolation 'cubic' is not supported", r"expected one of \('bicubic'")
error_case("imagenet --remode zeros", "--remode zeros", _imagenet_parse("--remode", "zeros"),
           r"expected one of \('pixel'", r"--remode 'zeros' is not supported", r"expected one of \('pixel'")
error_case("imagenet --image_mean with 2 values", "--image_mean 0.5 0.5", _imagenet_parse("--image_mean", "0.5", "0.5"),
           r"needs 3 values \(one per RGB channel\)", r"got \[0\.5, 0\.5\]", r"Pass e\.g\. --image_mean 0\.485")
error_case("imagenet --image_std with a 0", "--image_std 0.2 0 0.2", _imagenet_parse("--image_std", "0.2", "0", "0.2"),
           r"each > 0", r"got \[0\.2, 0\.0, 0\.2\]", r"Pass e\.g\. --image_std 0\.229")
error_case("imagenet --train_scale_min 1.5", "--train_scale_min 1.5", _imagenet_parse("--train_scale_min", "1.5"),
           r"must be in \(0, 1\]", r"got 1\.5", r"DeiT uses 0\.08")
error_case("imagenet --input_size 0", "--input_size 0", _imagenet_parse("--input_size", "0"),
           r"--input_size must be >= 1", r"got 0", r"224")
error_case("imagenet --max_train_samples 0 (12.12)", "--max_train_samples 0", _imagenet_parse("--max_train_samples",
                                                                                           "0"),
           r">= 1 \(or left unset for the whole split\)", r"got 0", r"or left unset")
error_case("imagenet teacher class names differ", "teacher with classes ['a'..'e'], data ant..eel",
           lambda tmp: _imagenet_run("--teacher_model_name_or_path", str(_named_timm_teacher(tmp)))(tmp),
           r"compares logits index by index", r"\(0, 'ant', 'a'\)", r"Give the student the teacher's id2label")


def _named_timm_teacher(tmp: Path) -> Path:
    model = tiny_timm_resnet()
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": list("abcde")}
    adapter_for(model).save(tmp / "teacher")
    return tmp / "teacher"


@case("deit RandAugment at full strength, Pillow 13 (12.11)", "rand-m30-n6-mstd0-inc1 on 40 images", "correct",
      verify=lambda shapes, tmp: None if shapes == {(3, 32, 32)} else f"shapes {shapes}")
def _randaugment(tmp: Path) -> set:
    transform = build_train_transform(ImageNetDataArguments(input_size=32, auto_augment="rand-m30-n6-mstd0-inc1"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3)).astype("uint8"))
    return {tuple(transform(image).shape) for _ in range(40)}


def _device_collator(**fields: Any) -> Callable[[Path], Any]:
    return lambda tmp: DeviceImageCollator(ImageNetDataArguments(input_size=32, decode_on_device=True, **fields), "cpu")


def _device_batch(tmp: Path) -> Any:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 48, 3), dtype="uint8")).save(buffer, format="JPEG")
    good = {"encoded_image": read_encoded({"bytes": buffer.getvalue()}, "row 0"), "labels": 0, "augment": True}
    broken = {"encoded_image": torch.tensor([0xFF, 0xD8, 1, 2], dtype=torch.uint8), "labels": 1, "augment": True}
    return _device_collator(auto_augment="none")(tmp)([good, broken])


error_case("decode_on_device with loader workers", "deit_tiny.py --decode_on_device true --dataloader_num_workers 2",
           _imagenet_parse("--decode_on_device", "true", "--dataloader_num_workers", "2"),
           r"needs --dataloader_num_workers 0", r"got 2", r"Drop one of the two flags")
error_case("decode_on_device with an AugMix policy", "--decode_on_device true --auto_augment augmix-m5-w4-d2",
           _device_collator(auto_augment="augmix-m5-w4-d2"), r"device path has RandAugment only",
           r"'augmix-m5-w4-d2' cannot run", r"Pass 'rand-m<magnitude>-n<ops>'")
error_case("decode_on_device with lanczos resampling", "--decode_on_device true --interpolation lanczos",
           _device_collator(interpolation="lanczos"), r"expected one of \['bicubic'", r"'lanczos' cannot run",
           r"expected one of \['bicubic'")
error_case("decode_on_device: DeiT's policy approximated", "--decode_on_device true, auto_augment rand-m9-mstd0.5-inc1",
           _device_collator(), r"runs as torchvision's RandAugment\(num_ops=2, magnitude=9",
           r"\{'mstd': '0.5', 'inc': '1'\} settings .* not applied", r"Use --decode_on_device false")
error_case("decode_on_device: undecodable bytes", "a batch whose second image is a truncated JPEG header",
           _device_batch, r"expected a JPEG, PNG", r"Image 1 of the batch cannot be decoded", r"Remove or re-encode it")
error_case("decode_on_device: a cell without bytes or path", "read_encoded({'bytes': None, 'path': None})",
           lambda tmp: read_encoded({"bytes": None, "path": None}, "row 7"), r"decode_on_device reads the image files",
           r"No encoded image bytes or path at row 7", r"pass a dataset whose image column holds image files")


def _quickstart(*argv: str) -> Callable[[Path], Any]:
    import quickstart

    return lambda tmp: quickstart.main(["--output_dir", str(tmp), "--use_cpu", "true", *argv])


error_case("quickstart --methods fitnet", "recipes/quickstart.py --methods ce,fitnet",
           _quickstart("--methods", "ce,fitnet"), r"expected comma-separated names of \('ce'", r"'ce,fitnet'",
           r"names of \('ce'")
error_case("quickstart --train_samples 5", "recipes/quickstart.py --train_samples 5",
           _quickstart("--train_samples", "5"), r"must be in \[10, 1787\]", r"got 5", r"must be in \[10, 1787\]")
error_case("quickstart --teacher_epochs 0", "recipes/quickstart.py --teacher_epochs 0 --train_samples 10",
           _quickstart("--teacher_epochs", "0", "--train_samples", "10"), r"Set num_train_epochs > 0",
           r"num_train_epochs=0", r"Set num_train_epochs > 0")


# -- real command lines, in a subprocess -----------------------------------------------------------------------------
def _command(*argv: str) -> Callable[[Path], Any]:
    def run(tmp: Path) -> None:
        result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        if result.returncode != 0:
            raise CommandFailed(result.returncode, result.stderr)
    return run


class CommandFailed(Exception):
    """A recipe command line exited with an error; its stderr is the message."""

    def __init__(self, code: int, stderr: str) -> None:
        super().__init__(f"exit status {code}: {stderr.strip()[-1500:]}")
        self.stderr = stderr


error_case("python recipes/cifar.py --config (no value)", "the real command line", _command("recipes/cifar.py",
                                                                                          "--config"),
           r"expected one argument", r"argument --config", r"usage: cifar\.py")
error_case("python recipes/train_teacher.py --method dkd", "the real command line",
           _command("recipes/train_teacher.py", "--method", "dkd"),
           r"trains with cross-entropy only", r"got method 'dkd'", r"use recipes/cifar\.py to distil")


# ======================================================================================================================
# running and classifying
# ======================================================================================================================
@dataclass
class Outcome:
    case: Case
    cls: str
    outcome: str
    message: str
    seconds: float
    missing: list[str] = field(default_factory=list)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("hf_projkd", "recipes")):
            self.messages.append(record.getMessage())


def _ours(error: BaseException) -> bool:
    """Raised by hf_projkd or a recipe (argparse exits of the recipes' parsers count as theirs)."""
    if isinstance(error, (SystemExit, CommandFailed)):
        stderr = getattr(error, "stderr", "")
        return "Traceback" not in stderr or bool(re.search(r'File "[^"]*(hf_projkd|recipes)/[^"]*"[^\n]*\n[^\n]*\n'
                                                            r'(?![\s\S]*File ")', stderr))
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(OURS)


def _missing(rule: tuple[str, str, str], text: str) -> list[str]:
    return [part for part, pattern in zip(("expected", "found", "fix"), rule, strict=True)
            if not re.search(pattern, text, re.S)]


def run_case(case: Case, scratch: Path) -> Outcome:
    tmp = Path(tempfile.mkdtemp(dir=scratch))
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    stderr = io.StringIO()
    torch.manual_seed(0)
    start = time.perf_counter()
    result, error = None, None
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
            result = case.run(tmp)
    except Exception as caught:  # noqa: BLE001 - every failure is classified
        error = caught
    except SystemExit as caught:
        error = caught
        error.stderr = stderr.getvalue()
    finally:
        root.removeHandler(records)
    seconds = time.perf_counter() - start
    lost = case.intact(tmp) if case.intact is not None else None
    if lost is not None:
        return Outcome(case, "DATA LOSS", _outcome(error), lost, seconds)
    if error is not None:
        text = _text(error)
        missing = _missing(case.rule, text) if case.rule else ["expected", "found", "fix"]
        cls = "CLEAR" if not missing else ("UNCLEAR" if _ours(error) else "RAW")
        return Outcome(case, cls, _outcome(error), text, seconds, missing)
    warnings = "\n".join(records.messages)
    wrong = case.verify(result, tmp) if case.verify is not None else None
    if case.expect == "correct":
        if wrong is None:
            return Outcome(case, "CORRECT", "no error; result verified", "", seconds)
        return Outcome(case, "WARNING" if warnings else "SILENT", f"wrong result: {wrong}", warnings, seconds)
    if wrong is not None:
        return Outcome(case, "SILENT", f"wrong result: {wrong}", warnings, seconds)
    if not warnings:
        return Outcome(case, "SILENT", "no error, no warning", "", seconds)
    clear = [m for m in records.messages if not _missing(case.rule, m)]
    return Outcome(case, "CLEAR" if clear else "WARNING", "WARNING logged", clear[0] if clear else warnings, seconds,
                   [] if clear else _missing(case.rule, warnings))


def _text(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"{getattr(error, 'stderr', '')}{error.code if isinstance(error.code, str) else ''}"
    if isinstance(error, CommandFailed):
        return error.stderr
    return str(error)


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "no error"
    if isinstance(error, SystemExit):
        return f"SystemExit({error.code if not isinstance(error.code, str) else '...'})"
    return type(error).__name__


def _excerpt(text: str, limit: int = 260) -> str:
    """The message's start (what was found) and end (usually the fix), on one line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if any(line.startswith("usage: ") for line in lines):  # argparse: the error line, not the long usage
        lines = [line for line in lines if ": error: " in line] or lines[-1:]
    text = " ".join(lines)
    if len(text) > limit:
        text = f"{text[: limit // 2 - 3]} ... {text[-(limit // 2 - 2):]}"
    return text.replace("|", "\\|")


def write_report(outcomes: list[Outcome], path: Path, seconds: float, command: str) -> str:
    counts = Counter(o.cls for o in outcomes)
    total = len(outcomes)
    order = ("CLEAR", "CORRECT", "WARNING", "UNCLEAR", "RAW", "SILENT", "DATA LOSS")
    summary = ", ".join(f"{name} {counts.get(name, 0)}" for name in order)
    clear = 100.0 * counts.get("CLEAR", 0) / total
    machine = (f"{platform.node() or 'unknown host'}: {platform.platform()}, {os.cpu_count()} CPU cores, Python "
               f"{platform.python_version()}, torch {torch.__version__}, CPU only")
    lines = [
        "# Bad-input and fault probe",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min).",
        f"Machine: {machine}.",
        "",
        f"**{total} cases: {summary}. CLEAR: {clear:.1f} %.**",
        "",
        "Classes (decided by `benchmarks/bad_inputs_probe.py`, from each case's three patterns):",
        "CLEAR = an error or WARNING naming what was expected, what was found and how to fix it; CORRECT = no error",
        "and the result checked right; WARNING = a warning missing a part; UNCLEAR = an hf_projkd error missing a",
        "part; RAW = a library error missing a part; SILENT = a wrong result without a word; DATA LOSS = an intact",
        "checkpoint damaged or lost, or NaN weights saved. Case names ending in (12.n) are the issue's items.",
        "",
        "| # | group | case | how it is triggered | outcome | class | message excerpt |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, o in enumerate(outcomes, 1):
        note = f" (missing: {', '.join(o.missing)})" if o.missing and o.cls not in ("CLEAR", "CORRECT") else ""
        lines.append(f"| {index} | {o.case.group} | {o.case.name} | {o.case.how.replace('|', '/')} | {o.outcome} | "
                     f"{o.cls}{note} | {_excerpt(o.message) if o.message else ''} |")
    lines += ["", f"Totals: {summary} (of {total}).", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=None, help="Run only the cases whose name contains this (case-insensitive).")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "bad_inputs_probe.md"))
    options = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    cases = [c for c in CASES if options.only is None or options.only.lower() in c.name.lower()]
    names = Counter(c.name for c in CASES)
    duplicated = [n for n, k in names.items() if k > 1]
    if duplicated:
        raise SystemExit(f"Case names must be distinct: {duplicated}")
    global FIX
    start = time.perf_counter()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bad_inputs_probe_") as scratch:
        FIX = Fixtures(Path(scratch))
        for number, case in enumerate(cases, 1):
            outcome = run_case(case, Path(scratch))
            outcomes.append(outcome)
            note = f" missing {outcome.missing}" if outcome.cls not in ("CLEAR", "CORRECT") else ""
            print(f"[{number:3d}/{len(cases)}] {outcome.cls:9s} {outcome.seconds:5.1f}s  {case.name}{note}"
                  + (f"\n      {_excerpt(outcome.message, 400)}" if outcome.cls not in ("CLEAR", "CORRECT") else ""),
                  flush=True)
    seconds = time.perf_counter() - start
    command = "python benchmarks/bad_inputs_probe.py" + (f" --only {options.only!r}" if options.only else "")
    summary = write_report(outcomes, Path(options.output), seconds, command)
    print(f"\n{len(outcomes)} cases in {seconds:.0f} s: {summary}\nTable: {options.output}")
    bad = sum(o.cls in ("UNCLEAR", "RAW", "SILENT", "DATA LOSS") for o in outcomes)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
