"""The front door cannot rot: every Python block of README.md runs as written (Hub ids and sizes swapped for tiny
local models and data), and every relative link of README.md and docs/ points to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import timm
from datasets import ClassLabel
from PIL import Image
from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor

from hf_projkd import adapter_for

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLASSES = ["ant", "bee", "cat", "dog", "eel"]
TINY = "per_device_train_batch_size=4, max_steps=2, use_cpu=True, report_to='none'"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("validation", 2)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(40 * label + rng.integers(0, 60, (40, 48, 3)), 0, 255).astype("uint8")
                Image.fromarray(pixels).save(root / split / name / f"{i}.jpg")
    return root


def _tiny_models(root: Path) -> tuple[Path, Path]:
    """A timm teacher with 1000 classes (as the block's student) and a transformers ConvNeXt teacher with its
    image processor and class names, in local folders."""
    timm_teacher = root / "timm_teacher"
    adapter_for(timm.create_model("resnet10t", num_classes=1000)).save(timm_teacher)
    convnext = root / "convnext_teacher"
    labels = {"id2label": dict(enumerate(CLASSES)), "label2id": {c: i for i, c in enumerate(CLASSES)}}
    ConvNextForImageClassification(ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32,
                                                  **labels)).save_pretrained(convnext)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(convnext)
    return timm_teacher, convnext


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert len(blocks) == 3, "the README's Python examples changed: update the substitutions below"
    images = _image_folder(tmp_path / "images")
    timm_teacher, convnext = _tiny_models(tmp_path)
    substitutions = [
        {'"timm/resnet34.tv_in1k"': repr(str(timm_teacher)), '"ILSVRC/imagenet-1k"': repr(str(images)),
         "per_device_train_batch_size=256, num_train_epochs=100": TINY},
        {'"facebook/convnext-tiny-224"': repr(str(convnext)), '"ILSVRC/imagenet-1k"': repr(str(images)),
         "per_device_train_batch_size=128, num_train_epochs=300": TINY,
         "hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768":
             "hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, "
             "patch_size=8"},
        {},
    ]
    monkeypatch.chdir(tmp_path)  # the blocks write their output folders where they run
    namespace: dict = {}
    for block, swaps in zip(blocks, substitutions, strict=True):
        for old, new in swaps.items():
            assert old in block, f"{old!r} is no longer in the README block: update the test"
            block = block.replace(old, new)
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert (tmp_path / "resnet18-srd" / "model.safetensors").is_file()
    model = namespace["model"]  # the last block reloaded the DeiT student with plain transformers
    assert type(model).__name__ == "DeiTForImageClassificationWithTeacher" and model.config.num_labels == 5
    assert isinstance(namespace["data"]["train"].features["label"], ClassLabel)


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_point_to_files_of_the_repository(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        resolved = (page.parent / target).resolve()
        assert resolved.exists(), f"{page.name} links to {target}, which does not exist"
        assert ROOT in resolved.parents or resolved == ROOT, f"{page.name} links outside the repository: {target}"
