"""The three ImageNet recipes, end to end on tiny random models and a generated 32 px dataset (offline).

Each recipe file's config and ``DEFAULTS`` run through ``recipes/imagenet.py``'s ``run`` (the real code path), with
only sizes, steps and devices overridden on the command line; then the saved student is reloaded in a fresh
process that never imports hf_projkd and must give the trained student's logits.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import deit_small
import deit_tiny
import huggingface_hub
import imagenet
import imagenet_resnet18
import numpy as np
import pytest
import timm
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from imagenet import attach_preprocessing, configure_schedule, read_baseline, run
from PIL import Image

from hf_projkd import adapter_for, create_student
from hf_projkd.cli import read_config_file
from hf_projkd.data.device_images import DeviceImageCollator, read_encoded
from hf_projkd.data.imagenet import (
    ImageNetDataArguments,
    RepeatedAugmentationSampler,
    build_eval_transform,
    build_train_transform,
    collate_images,
    load_imagenet,
)
from hf_projkd.families import normalization_of
from hf_projkd.schedules import StepDecay

RECIPES = {"deit_tiny": (deit_tiny, "deit.yaml"), "deit_small": (deit_small, "deit.yaml"),
           "imagenet_resnet18": (imagenet_resnet18, "imagenet_resnet18.yaml")}
CLASSES = ["ant", "bee", "cat", "dog", "eel"]
TINY_DEIT = {"model_type": "deit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64}


def _image(rng: np.random.Generator, label: int) -> Image.Image:
    """40x48 images whose mean colour depends on the class, so the data is not pure noise."""
    base = np.zeros((40, 48, 3)) + 40 * label
    return Image.fromarray(np.clip(base + rng.integers(0, 60, (40, 48, 3)), 0, 255).astype("uint8"))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("validation", 2)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                _image(rng, label).save(root / split / name / f"{i}.jpg")
    return root


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("parquet")
    rng = np.random.default_rng(1)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=CLASSES)})
    for split, n in (("train", 16), ("validation", 10)):
        labels = [i % len(CLASSES) for i in range(n)]
        images = []
        for label in labels:
            buffer = io.BytesIO()
            _image(rng, label).save(buffer, format="JPEG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            str(root / f"{split}-00000-of-00001.parquet")
        )
    return root


def _timm_teacher(tmp_path_factory, arch: str) -> Path:
    folder = tmp_path_factory.mktemp(f"teacher_{arch}")
    torch.manual_seed(0)
    adapter_for(timm.create_model(arch, num_classes=len(CLASSES), pretrained=False)).save(folder)
    return folder


def _config(recipe: str) -> dict:
    return read_config_file(imagenet.CONFIGS / RECIPES[recipe][1])


def _common_argv(output_dir: Path, dataset: Path, teacher: Path) -> list[str]:
    return [
        "--dataset_name", str(dataset), "--teacher_model_name_or_path", str(teacher), "--output_dir", str(output_dir),
        "--input_size", "32", "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "8", "--use_cpu", "--bf16", "false", "--dataloader_num_workers", "0",
        "--dataloader_persistent_workers", "false", "--eval_strategy", "no", "--save_strategy", "no",
        "--report_to", "none", "--logging_steps", "1", "--disable_tqdm", "true", "--seed", "0",
    ]


def _reload_in_fresh_process(tmp_path: Path, code: str, pixel_values: torch.Tensor) -> torch.Tensor:
    """Run ``code`` (which defines ``logits`` from ``pixel_values``) where hf_projkd was never imported."""
    torch.save(pixel_values, tmp_path / "pixel_values.pt")
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["HF_HUB_OFFLINE"] = "1"
        import torch
        pixel_values = torch.load({str(tmp_path / 'pixel_values.pt')!r})
        with torch.no_grad():
    """) + textwrap.indent(textwrap.dedent(code), "    ") + textwrap.dedent(f"""
        assert "hf_projkd" not in sys.modules, "the reload must not need hf_projkd"
        torch.save(logits, {str(tmp_path / 'logits.pt')!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "logits.pt")


def _eval_batch(dataset: Path) -> torch.Tensor:
    data = load_imagenet(ImageNetDataArguments(dataset_name=str(dataset), input_size=32))
    return torch.stack([data.eval[i]["pixel_values"] for i in range(4)])


# -- recipes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["deit_tiny", "deit_small"])
def test_deit_recipe_trains_saves_and_reloads_in_plain_transformers(
    recipe, tmp_path, tmp_path_factory, image_folder, monkeypatch
):
    teacher = _timm_teacher(tmp_path_factory, "regnety_002")
    config = tmp_path / "tiny_deit.json"
    config.write_text(json.dumps(TINY_DEIT))
    module, config_name = RECIPES[recipe]
    assert _config(recipe)["teacher_model_name_or_path"] == "timm/regnety_160.deit_in1k"
    out = tmp_path / "out"
    argv = [*_common_argv(out, image_folder, teacher), "--student", str(config)]
    uploads = []
    if recipe == "deit_small":  # --push_to_hub through the recipe: the upload call is the only thing mocked
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: SimpleNamespace(
            repo_id=repo_id))
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: uploads.append(
            (kw, sorted(p.name for p in Path(kw["folder_path"]).iterdir()))))
        argv += ["--push_to_hub", "--hub_model_id", "someone/deit-small-srd"]
    trainer, metrics = run(config_name, module.DEFAULTS, argv)
    if recipe == "deit_small":
        (call, files), = uploads
        assert call["repo_id"] == "someone/deit-small-srd"
        assert files == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
        card = (Path(call["folder_path"]) / "README.md").read_text()
        assert "someone/deit-small-srd" in card and f"| teacher ({teacher}) |" in card

    student = trainer.student
    assert type(student).__name__ == "DeiTForImageClassificationWithTeacher"
    assert trainer.args.weight_decay_filter == "no_1d" and trainer.args.lr_scheduler_type == "cosine_with_min_lr"
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, RepeatedAugmentationSampler) and sampler.repeats == 3 and len(sampler) == 20
    # lr scaled from 5e-4 per 512 images to the batch of 4; warmup of 5 epochs of 20 images = 25 steps
    assert trainer.args.learning_rate == pytest.approx(5e-4 * 4 / 512)
    assert trainer.args.warmup_steps == 25
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(math.isfinite(e["loss_feature"]) and e["loss_logit"] >= 0 for e in logs)
    assert trainer.model.projector.in_features == 32 and trainer.model.projector.out_features == 368
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = {names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert "projector.weight" in decayed and "projector.bias" not in decayed
    assert not any(n.endswith(("cls_token", "distillation_token", "position_embeddings", "bias")) for n in decayed)
    assert not any("layernorm" in n for n in decayed)
    assert 0.0 <= metrics["eval_top1"] <= 100.0 and 0.0 <= metrics["eval_teacher_top1"] <= 100.0
    assert trainer.args.mixup_alpha == 0.8 and trainer.args.cutmix_alpha == 1.0 and trainer._mixup is not None

    files = {p.name for p in out.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
    assert "distillation_state.safetensors" not in files
    card = (out / "README.md").read_text()
    assert "knowledge-distillation" in card and f"{metrics['eval_top1']:.2f}" in card

    pixel_values = _eval_batch(image_folder)
    student.eval()
    with torch.no_grad():
        expected = student(pixel_values).logits
    if recipe == "deit_tiny":  # one fresh-process reload is enough for the transformers family
        reloaded = _reload_in_fresh_process(tmp_path, f"""
            from transformers import AutoModelForImageClassification
            model = AutoModelForImageClassification.from_pretrained({str(out)!r}).eval()
            assert type(model).__name__ == "DeiTForImageClassificationWithTeacher", type(model).__name__
            logits = model(pixel_values).logits
        """, pixel_values)
        torch.testing.assert_close(reloaded, expected, atol=1e-5, rtol=1e-5)


def test_resnet18_recipe_with_config_file_trains_and_reloads_with_timm(tmp_path, tmp_path_factory, parquet_folder):
    teacher = _timm_teacher(tmp_path_factory, "resnet10t")
    assert _config("imagenet_resnet18")["teacher_model_name_or_path"] == "timm/resnet34.tv_in1k"
    config = tmp_path / "run.yaml"
    config.write_text("lr_decay_at: [0.25, 0.5]\nmax_steps: 3\n")  # the CLI below overrides max_steps
    out = tmp_path / "out"
    argv = [*_common_argv(out, parquet_folder, teacher), "--config", str(config), "--eval_teacher_metrics", "false"]
    trainer, metrics = run("imagenet_resnet18.yaml", imagenet_resnet18.DEFAULTS, argv)

    assert trainer.state.global_step == 2 and trainer.args.optim == "sgd"
    assert not isinstance(trainer._get_train_sampler(), RepeatedAugmentationSampler)
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9
    # lr 0.1 per 256 images, batch 4; x0.1 after a quarter and a half of the 2 steps
    assert trainer.args.learning_rate == pytest.approx(0.1 * 4 / 256)
    assert trainer.args.lr_decay_fractions == (0.25, 0.5) and trainer.lr_scheduler.lr_lambdas[0].milestones == [1]
    logged = [e["learning_rate"] for e in trainer.state.log_history if "loss" in e]
    assert logged[-1] == pytest.approx(0.1 * 4 / 256 * 0.1)
    assert "eval_teacher_top1" not in metrics
    assert trainer.student.pretrained_cfg["interpolation"] == "bilinear"

    config_json = json.loads((out / "config.json").read_text())
    assert config_json["architecture"] == "resnet18" and config_json["num_classes"] == len(CLASSES)
    saved_cfg = config_json["pretrained_cfg"]  # the eval preprocessing travels with the timm student
    assert saved_cfg["interpolation"] == "bilinear" and saved_cfg["crop_pct"] == 0.875
    assert list(saved_cfg["input_size"]) == [3, 32, 32]
    results_section = (out / "README.md").read_text().split("## Cost")[0]
    assert "| student (this model) |" in results_section and "| teacher" not in results_section  # not measured

    pixel_values = _eval_batch(parquet_folder)
    student = trainer.student.eval()
    with torch.no_grad():
        expected = student(pixel_values)
    reloaded = _reload_in_fresh_process(tmp_path, f"""
        import timm
        from transformers import AutoModelForImageClassification
        model = timm.create_model("local-dir:{out}", pretrained=True).eval()
        wrapped = AutoModelForImageClassification.from_pretrained({str(out)!r}).eval()
        logits = model(pixel_values)
        torch.testing.assert_close(wrapped(pixel_values).logits, logits)
    """, pixel_values)
    torch.testing.assert_close(reloaded, expected, atol=1e-5, rtol=1e-5)


# -- pieces ----------------------------------------------------------------------------------------------------
def test_data_pipeline_gives_normalised_crops_and_survives_randaugment_at_full_strength(image_folder):
    args = ImageNetDataArguments(dataset_name=str(image_folder), input_size=32)
    data = load_imagenet(args)
    assert data.class_names == CLASSES and data.num_train_examples == 20 and len(data.eval) == 10
    batch = collate_images([data.train[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["labels"].dtype == torch.long
    # eval transform: resize shorter side to floor(32 / 0.875) = 36, center crop 32, ImageNet normalisation
    image = Image.open(next((image_folder / "validation" / "ant").iterdir())).convert("RGB")
    torch.testing.assert_close(data.eval[0]["pixel_values"], build_eval_transform(args)(image))
    # issue 12.11: timm's 'inc1' posterize reaches 0 bits, which Pillow 13 refuses; the recipe's policy at its
    # strongest level must transform every image (0 bits: a black image, as older Pillow gave)
    strongest = build_train_transform(ImageNetDataArguments(input_size=32, auto_augment="rand-m30-n6-mstd0-inc1"))
    torch.manual_seed(0)
    for _ in range(40):
        assert strongest(image).shape == (3, 32, 32)


def test_streaming_needs_a_size_and_derives_max_steps(image_folder, tmp_path):
    from conftest import make_args
    from imagenet import RecipeArguments

    data = load_imagenet(ImageNetDataArguments(dataset_name=str(image_folder), input_size=32, streaming=True))
    assert next(iter(data.train))["pixel_values"].shape == (3, 32, 32)
    args = make_args(tmp_path, max_steps=-1, num_train_epochs=3, per_device_train_batch_size=4)
    with pytest.raises(ValueError, match="num_train_examples"):
        configure_schedule(args, RecipeArguments(), None, streaming=True)
    configure_schedule(args, RecipeArguments(warmup_epochs=1), 20, streaming=True)
    assert args.max_steps == 15 and args.warmup_steps == 5


def test_a_synset_named_teacher_is_aligned_with_a_description_named_imagenet():
    from imagenet import align_imagenet_teacher_labels
    from timm.data import ImageNetInfo

    from hf_projkd.validation import check_label_names

    info = ImageNetInfo()
    descriptions = list(info.label_descriptions())

    def teacher(names: list[str]) -> torch.nn.Module:
        model = timm.create_model("resnet10t", num_classes=1000)
        model.pretrained_cfg = {**model.pretrained_cfg, "label_names": names}
        return model

    student = adapter_for(create_student("resnet18", descriptions, 32))
    synsets = teacher(list(info.label_names()))
    with pytest.raises(ValueError, match="class names differ"):
        check_label_names(student, adapter_for(synsets))
    align_imagenet_teacher_labels(synsets, descriptions)
    check_label_names(student, adapter_for(synsets))  # now the same classes by the same names
    shuffled = teacher(list(reversed(info.label_names())))
    align_imagenet_teacher_labels(shuffled, descriptions)  # another order: not "fixed", the check still fails
    with pytest.raises(ValueError, match="class names differ"):
        check_label_names(student, adapter_for(shuffled))


def test_help_documents_every_field_of_the_three_argument_groups(capsys):
    from dataclasses import fields

    from imagenet import RecipeArguments

    from hf_projkd import DistillationArguments

    with pytest.raises(SystemExit):
        imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, ["--help"])
    text = capsys.readouterr().out
    for group in (RecipeArguments, ImageNetDataArguments, DistillationArguments):
        missing = [f.name for f in fields(group) if f.init and f"--{f.name}" not in text]
        assert not missing, f"{group.__name__}: {missing}"
    assert "--config CONFIG" in text
    weight_decay_help = text.split("  --weight_decay WEIGHT_DECAY")[1]
    assert weight_decay_help[: weight_decay_help.index("  --")].split("(default: ")[1].startswith("0.05)")


def test_saved_image_processor_matches_the_eval_transform():
    args = ImageNetDataArguments(input_size=32)
    processor = attach_preprocessing(create_student("deit-tiny", CLASSES, 32), args)
    ramp = np.add.outer(np.arange(40), np.arange(48))[:, :, None].repeat(3, 2) * 2  # smooth: no aliasing noise
    image = Image.fromarray(ramp.astype("uint8"))
    ours = build_eval_transform(args)(image)
    theirs = processor(image, return_tensors="pt").pixel_values[0]
    assert processor.size == {"shortest_edge": 36} and theirs.shape == ours.shape == (3, 32, 32)
    torch.testing.assert_close(theirs, ours, atol=0.1, rtol=0.0)
    # every accepted filter is recorded as itself, not replaced by bicubic
    lanczos = attach_preprocessing(create_student("deit-tiny", CLASSES, 32), ImageNetDataArguments(
        input_size=32, interpolation="lanczos"))
    assert lanczos.resample == Image.Resampling.LANCZOS
    with pytest.raises(ValueError, match="--interpolation 'random' is not supported"):
        ImageNetDataArguments(interpolation="random")


def test_baseline_results_are_read_from_a_measured_run_file(tmp_path):
    path = tmp_path / "eval_results.json"
    path.write_text(json.dumps({"eval_top1": 69.76, "eval_top5": 89.08, "epoch": 100.0}))
    baseline = read_baseline(str(path))
    assert (baseline.top1, baseline.top5) == (69.76, 89.08) and str(path) in baseline.source
    path.write_text(json.dumps({"eval_loss": 1.0}))
    with pytest.raises(ValueError, match="eval_top1"):
        read_baseline(str(path))


def test_stochastic_depth_drops_deit_branches_in_training_only(tmp_path):
    config = tmp_path / "tiny_deit.json"
    config.write_text(json.dumps(TINY_DEIT))
    torch.manual_seed(0)
    student = create_student(str(config), CLASSES, 32, drop_path_rate=1.0)  # 2 layers: rates 0 and 1
    layers = [m for m in student.modules() if type(m).__name__ == "DeiTLayer"]
    assert len(layers) == 2
    seen = []
    layers[1].register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    pixel_values = torch.randn(2, 3, 32, 32)
    student.train()
    student(pixel_values)
    torch.testing.assert_close(seen[-1][1], seen[-1][0])  # both branches of the last layer dropped
    student.eval()
    student(pixel_values)
    assert not torch.allclose(seen[-1][1], seen[-1][0])
    assert not layers[0].attention._forward_hooks and len(layers[1].mlp._forward_hooks) == 1  # rates 0 and 1


def test_step_schedule_and_student_builder():
    schedule = StepDecay([4, 8], gamma=0.1, warmup_steps=2)
    assert [round(schedule(s), 6) for s in (0, 1, 3, 4, 7, 8)] == [0.5, 1.0, 1.0, 0.1, 0.1, 0.01]
    deit = create_student("deit-tiny", CLASSES, 224)
    assert deit.config.hidden_size == 192 and deit.config.num_attention_heads == 3 and deit.config.num_labels == 5
    assert create_student("deit-small", CLASSES, 224).config.hidden_size == 384
    assert type(create_student("resnet50", CLASSES, 32)).__name__ == "ResNet"  # timm's, outside the CIFAR recipes
    assert type(create_student("resnet50", CLASSES, 32, cifar_first=True)).__name__ == "CifarNetForImageClassification"
    with pytest.raises(OSError, match="Could not load the model 'not-a-model'"):
        create_student("not-a-model", CLASSES, 224)


def test_recipe_defaults_follow_the_machine_and_what_the_user_asked_for(tmp_path):
    """Issue 12.11/13: bf16, the bf16 teacher and persistent workers are the config's defaults only where they work;
    --learning_rate given turns the base-lr rule off; both given is refused."""
    argv = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    recipe, _, args = imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, [*argv, "--bf16", "false"])
    assert args.teacher_dtype == "auto"  # the config's bf16 teacher without bf16 training would run in slow bf16
    _, _, asked = imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, [*argv, "--bf16", "false", "--teacher_dtype",
                                                                   "bfloat16"])
    assert asked.teacher_dtype == "bfloat16"
    _, _, none = imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, [*argv, "--dataloader_num_workers", "0"])
    assert none.dataloader_persistent_workers is False
    lr_recipe, _, lr_args = imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, [*argv, "--learning_rate", "0.01"])
    assert lr_recipe.base_learning_rate is None and lr_args.learning_rate == 0.01
    assert recipe.base_learning_rate == 5e-4
    with pytest.raises(ValueError, match="either --learning_rate"):
        imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, [*argv, "--learning_rate", "0.01", "--base_learning_rate",
                                                         "0.001"])


# -- decode and augment on the device (issue 11) ---------------------------------------------------------------
def _encoded_example(image: Image.Image, augment: bool, fmt: str = "JPEG") -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=95) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return {"encoded_image": read_encoded({"bytes": buffer.getvalue(), "path": None}, "test"), "labels": 3,
            "augment": augment}


def _photo(size: tuple[int, int] = (60, 44)) -> Image.Image:
    y, x = np.mgrid[0:size[1], 0:size[0]]
    pixels = np.stack([np.sin(x / 7 + c) * np.cos(y / 9) for c in range(3)], -1) * 100 + 128
    return Image.fromarray(pixels.clip(0, 255).astype("uint8"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_device_eval_view_matches_the_cpu_eval_transform(fmt):
    """Same decode (libjpeg-turbo / the PNG fallback), same resize-shorter-side + center crop + normalisation: only
    resampling rounding (< 1.5 grey levels) may differ."""
    args = ImageNetDataArguments(input_size=32, decode_on_device=True, auto_augment="none")
    image = _photo()
    batch = DeviceImageCollator(args, "cpu")([_encoded_example(image, augment=False, fmt=fmt)] * 2)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=95) if fmt == "JPEG" else image.save(buffer, format=fmt)
    expected = build_eval_transform(args)(Image.open(buffer).convert("RGB"))
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["labels"].tolist() == [3, 3]
    # the trainer reads the data's normalisation from the collator (to convert the teacher's inputs)
    mean, std = normalization_of(DeviceImageCollator(args, "cpu"))
    assert mean == pytest.approx(args.image_mean) and std == pytest.approx(args.image_std)
    difference = (batch["pixel_values"][0] - expected).abs() * torch.tensor(args.image_std).view(3, 1, 1) * 255
    assert difference.max() < 1.5 and difference.mean() < 0.2


def test_device_train_view_is_a_random_resized_crop_with_flips_then_augmented_and_erased():
    """With the whole image as the only crop (scale 1 of a square image), each train view is the resized image or
    its mirror, both occur, and the draw follows the seeds; RandAugment and random erasing then change pixels."""
    square = _photo((48, 48))
    plain = ImageNetDataArguments(input_size=32, decode_on_device=True, auto_augment="none", color_jitter=0,
                                  reprob=0, train_scale_min=1.0)
    collator = DeviceImageCollator(plain, "cpu")
    torch.manual_seed(0)
    views = collator([_encoded_example(square, augment=True)] * 16)["pixel_values"]
    whole = DeviceImageCollator(ImageNetDataArguments(input_size=32, crop_pct=1.0, decode_on_device=True,
                                                      auto_augment="none"), "cpu")(
        [_encoded_example(square, augment=False)])["pixel_values"][0]
    flipped = [bool(torch.equal(view, whole.flip(-1))) for view in views]
    assert all(torch.equal(view, whole) or flip for view, flip in zip(views, flipped, strict=True))
    assert 0 < sum(flipped) < 16
    torch.manual_seed(0)
    torch.testing.assert_close(collator([_encoded_example(square, augment=True)] * 16)["pixel_values"], views)

    augmented = ImageNetDataArguments(input_size=32, decode_on_device=True, auto_augment="rand-m9-n2", reprob=1.0,
                                      train_scale_min=1.0)
    torch.manual_seed(0)
    changed = DeviceImageCollator(augmented, "cpu")([_encoded_example(square, augment=True)] * 16)["pixel_values"]
    assert changed.shape == views.shape and torch.isfinite(changed).all()
    same = [bool(torch.equal(a, whole) or torch.equal(a, whole.flip(-1))) for a in changed]
    assert not any(same)  # every view erased (reprob 1) and RandAugment-ed


def test_device_path_refuses_what_it_cannot_do_and_warns_what_it_approximates(caplog):
    with caplog.at_level("WARNING", logger="hf_projkd.data.device_images"):
        DeviceImageCollator(ImageNetDataArguments(decode_on_device=True), "cpu")  # DeiT's rand-m9-mstd0.5-inc1
    assert "{'mstd': '0.5', 'inc': '1'}" in caplog.text and "--decode_on_device false" in caplog.text
    with pytest.raises(ValueError, match="device path has RandAugment only"):
        DeviceImageCollator(ImageNetDataArguments(decode_on_device=True, auto_augment="augmix-m5-w4-d2"), "cpu")
    with pytest.raises(ValueError, match="expected one of \\['bicubic', 'bilinear', 'nearest'\\]"):
        DeviceImageCollator(ImageNetDataArguments(decode_on_device=True, interpolation="lanczos"), "cpu")
    broken = {"encoded_image": torch.tensor([0xFF, 0xD8, 1, 2, 3], dtype=torch.uint8), "labels": 0, "augment": True}
    good = _encoded_example(_photo(), augment=True)
    with pytest.raises(ValueError, match="Image 1 of the batch cannot be decoded"):
        DeviceImageCollator(ImageNetDataArguments(decode_on_device=True, auto_augment="none"), "cpu")([good, broken])
    with pytest.raises(ValueError, match="No encoded image bytes or path"):
        read_encoded({"bytes": None, "path": None}, "row 7")


def test_deit_recipe_decodes_on_the_device_end_to_end(tmp_path, tmp_path_factory, image_folder):
    """``--decode_on_device true``: the loader yields encoded bytes, the collator gives the same eval batches as
    the CPU pipeline (to resampling rounding), and the recipe trains and evaluates; workers are refused."""
    teacher = _timm_teacher(tmp_path_factory, "regnety_002")
    config = tmp_path / "tiny_deit.json"
    config.write_text(json.dumps(TINY_DEIT))
    argv = [*_common_argv(tmp_path / "out", image_folder, teacher), "--student", str(config),
            "--decode_on_device", "true"]
    data_args = ImageNetDataArguments(dataset_name=str(image_folder), input_size=32, decode_on_device=True)
    data = load_imagenet(data_args)
    example = data.train[0]
    assert set(example) == {"encoded_image", "augment", "labels"} and example["augment"] is True
    assert example["encoded_image"].dtype == torch.uint8 and data.eval[0]["augment"] is False
    on_device = DeviceImageCollator(data_args, "cpu")([data.eval[i] for i in range(4)])["pixel_values"]
    torch.testing.assert_close(on_device, _eval_batch(image_folder), atol=0.03, rtol=0)

    trainer, metrics = run("deit.yaml", deit_tiny.DEFAULTS, argv)
    assert isinstance(trainer.data_collator.collator, DeviceImageCollator)
    assert trainer.args.dataloader_num_workers == 0
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(math.isfinite(e["loss"]) for e in logs)
    assert 0.0 <= metrics["eval_top1"] <= 100.0
    with pytest.raises(ValueError, match="needs --dataloader_num_workers 0, got 2"):
        imagenet.parse("deit.yaml", deit_tiny.DEFAULTS, [*argv, "--dataloader_num_workers", "2"])
